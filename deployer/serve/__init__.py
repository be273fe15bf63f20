"""serve: ``deployer serve``, the HTTP service over one infrastructure repository (issue 14).

Sits above ``alerts`` and ``ops`` (cli -> serve -> alerts -> ops -> ...):
``app`` (create_app: routes, error answers, the body limit, the lifespan),
``state`` (ServeState: the settings, the token store, the job queue, the
event broker, the sync and the fleet cache), ``auth`` (API tokens with
scopes stored hashed, bearer and session-cookie identities, CSRF, the
failed-auth rate limit), ``api`` (the JSON routes under /api/v1/), ``openapi`` (the API as an
OpenAPI 3.1 document),
``validate`` (request bodies checked, one line per problem), ``jobs``
(deploy / rollback / lock requests queued and run one at a time through ops
and the repository transaction), ``events`` (the publish/subscribe broker and
the server-sent-events encoding), ``fleet`` (the fleet status model and its
background snapshots), ``sync`` (the clone kept up to date with its remote),
``webhook`` (HMAC-SHA256 signed CI receivers, replays refused; deploy and
release hooks), ``release_hook`` (a release hook's job: the pushed commit
built, pushed and deployed through ``ops.release``),
``pages`` (the dashboard's server-rendered pages, with its templates/ and
static/ package data), ``page_data`` (what the pages show, as plain text
fields: fleet rows, a service's history, a job, the activity feed) and
``live`` (Consul's health followed with blocking queries, once per Consul for the
whole process: the fleet snapshot and the page update within seconds of a check
changing, and the alerts' rules read the same watches).
"""
