"""Media: playback and thumbnails, decoded by the unprivileged media worker."""
