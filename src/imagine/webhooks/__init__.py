"""Signed webhooks: a task's end, POSTed to its `callback_url` (docs/webhooks.md).

`signing` makes secrets and Standard Webhooks signatures; `repository` is the
outbox's SQL (claim with a lease, record an attempt); `dispatcher` delivers
due events under the SSRF rules; `service` holds the per-account secret and
the delivery history; `endpoints` serves that history.
"""
