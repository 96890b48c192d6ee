#!/bin/sh
# Creates (or replaces) the forward-auth route of apisix-forward-auth.yaml through APISIX's
# Admin API (APISIX 3.14+ with etcd). Also merge config.yaml (underscores_in_headers "off")
# into APISIX's conf/config.yaml.
#
#   APISIX_ADMIN=http://127.0.0.1:9180 APISIX_ADMIN_KEY=… sh admin-api-forward-auth.sh
set -eu
: "${APISIX_ADMIN:=http://127.0.0.1:9180}"
: "${APISIX_ADMIN_KEY:?set APISIX_ADMIN_KEY to an admin key of conf/config.yaml}"

curl -sS --fail-with-body -X PUT "$APISIX_ADMIN/apisix/admin/routes/identity-forward-auth" \
  -H "X-API-KEY: $APISIX_ADMIN_KEY" -H 'Content-Type: application/json' \
  --data-binary @- <<'JSON'
{
  "uri": "/app/*",
  "upstream": { "type": "roundrobin", "nodes": { "app:8000": 1 } },
  "plugins": {
    "serverless-pre-function": {
      "phase": "rewrite",
      "functions": [
        "return function(conf, ctx)\n  local core = require(\"apisix.core\")\n  local headers, err = ngx.req.get_headers(0, true)\n  if err == \"truncated\" then\n    return 400\n  end\n  for name in pairs(headers) do\n    local n = string.lower(name):gsub(\"_\", \"-\")\n    if n:sub(1, 11) == \"x-identity-\" or n == \"x-userinfo\" or n == \"x-id-token\" then\n      core.request.set_header(ctx, name, nil)\n    end\n  end\nend\n"
      ]
    },
    "forward-auth": {
      "uri": "http://identity-sidecar:8080/_sidecar/auth",
      "request_method": "GET",
      "request_headers": [
        "Authorization", "X-Access-Token", "Origin", "Access-Control-Request-Method",
        "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"
      ],
      "upstream_headers": [
        "X-Identity-Status", "X-Identity-Subject", "X-Identity-Email", "X-Identity-Username",
        "X-Identity-Name", "X-Identity-Roles", "X-Identity-Organizations",
        "X-Identity-Managed-Organizations", "X-Identity-Contracts", "X-Identity-Entitlements",
        "X-Identity-Active-Organization", "X-Userinfo"
      ],
      "client_headers": ["Content-Type", "Retry-After", "WWW-Authenticate"],
      "timeout": 10000,
      "status_on_error": 503,
      "allow_degradation": false
    },
    "serverless-post-function": {
      "phase": "header_filter",
      "functions": [
        "return function(conf, ctx)\n  if ngx.status == 503 and not ngx.header[\"Retry-After\"] then\n    ngx.header[\"Retry-After\"] = \"5\"\n  end\nend\n"
      ]
    }
  }
}
JSON
