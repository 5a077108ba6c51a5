"""Support: the support bundle (`station diagnose`) and the settings backup (`station config`).

One module per job:

- `bundle`: the support bundle, also for a configuration the daemon would refuse;
- `facts`: what the bundle says of the machine (versions, disks, SMART, ports, logs);
- `redaction`: secrets removed by key name and by value from what leaves the station;
- `backup`: the signed settings backup, its export and its validated, atomic import;
- `tarball`: the members and private files both are made of.

The names callers use are importable from here (`from station import support`).
"""

from station.support.backup import (
    KEY_FILE,
    UI_SETTINGS_KEY,
    ImportResult,
    SettingsBackup,
    backup_key,
    export_settings,
    import_settings,
    read_backup,
    read_ui_settings,
)
from station.support.bundle import EVENTS, InvalidConfig, diagnose, load_for_diagnose
from station.support.facts import (
    api_base,
    daemon_status,
    disks,
    journal,
    kernel_log,
    port_map,
    smart_history,
    system_report,
    versions,
)
from station.support.redaction import REDACTED, SECRET_WORDS, redact, secret_values
from station.support.tarball import default_name, write_private

__all__ = [
    "EVENTS",
    "KEY_FILE",
    "REDACTED",
    "SECRET_WORDS",
    "UI_SETTINGS_KEY",
    "ImportResult",
    "InvalidConfig",
    "SettingsBackup",
    "api_base",
    "backup_key",
    "daemon_status",
    "default_name",
    "diagnose",
    "disks",
    "export_settings",
    "import_settings",
    "journal",
    "kernel_log",
    "load_for_diagnose",
    "port_map",
    "read_backup",
    "read_ui_settings",
    "redact",
    "secret_values",
    "smart_history",
    "system_report",
    "versions",
    "write_private",
]
