"""The link to the central platform: the station connects out, registers, pushes, pulls.

- `config`: the `[platform]` and `[integrity]` sections.
- `protocol`: the messages, shared by the station and the reference platform
  (docs/platform-protocol.md, docs/platform-openapi.json).
- `outbox`: the durable outbox in the catalog (exactly once, ordered per kind).
- `breaker`: backoff and the circuit breaker.
- `signing`: Ed25519 command signatures.
- `link`: the `PlatformLink` worker.
- `sm3`: the background SM3 digests.
- `secrets`: stored secrets encrypted at rest.
- `reference`: a small reference platform (`python -m station.platform.reference`).
"""
