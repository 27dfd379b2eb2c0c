"""The one server runtime every service uses.

- `server.ModelServer`: gRPC server factory and lifecycle (health, reflection, SIGTERM drain)
- `kserve`: the open inference protocol (KServe v2) over registered `model.Model`s
- `interceptors`: request ids, metrics and the single exception -> status-code mapping
- `config`: flags and GENAUG_* environment variables shared by every service
- `errors`, `deadline`, `metrics`, `logs`, `tls`, `entrypoint`
"""
