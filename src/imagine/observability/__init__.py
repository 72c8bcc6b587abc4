"""What an operator sees of the service: metrics, logs, health and traces.

- `logs`: one JSON object per line (or readable text on a terminal), with the
  request's or task's context on every line and secrets redacted.
- `metrics`: the instruments (Prometheus) and the helpers that record them.
- `http`: `RequestTelemetry`, the ASGI layer that gives each request its id,
  its access-log line and its place in the request-duration histogram.
- `exposition`: `/metrics` (the process's instruments plus the queue read
  from the database at scrape time) and the metrics port of `imagine worker`.
- `health`: `/livez` and `/readyz`.
- `tracing`: OpenTelemetry spans, only with the `otel` extra and an endpoint.
"""
