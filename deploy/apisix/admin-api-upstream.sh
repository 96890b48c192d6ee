#!/bin/sh
# Creates (or replaces) the upstream-mode route of apisix-upstream.yaml through APISIX's
# Admin API (APISIX 3.14+ with etcd). The sidecar runs with sidecar-upstream.toml.
#
#   OIDC_CLIENT_SECRET=… OIDC_SESSION_SECRET="$(openssl rand -base64 32)" \
#   APISIX_ADMIN_KEY=… sh admin-api-upstream.sh
set -eu
: "${APISIX_ADMIN:=http://127.0.0.1:9180}"
: "${APISIX_ADMIN_KEY:?set APISIX_ADMIN_KEY to an admin key of conf/config.yaml}"
: "${OIDC_CLIENT_SECRET:?set OIDC_CLIENT_SECRET to the Keycloak client secret}"
: "${OIDC_SESSION_SECRET:?set OIDC_SESSION_SECRET (16+ characters, the same on every APISIX)}"

# The JSON below is expanded by the shell only for the two ${…} secrets.
curl -sS --fail-with-body -X PUT "$APISIX_ADMIN/apisix/admin/routes/identity-upstream" \
  -H "X-API-KEY: $APISIX_ADMIN_KEY" -H 'Content-Type: application/json' \
  --data-binary @- <<JSON
{
  "uri": "/app/*",
  "upstream": { "type": "roundrobin", "nodes": { "identity-sidecar:8080": 1 } },
  "plugins": {
    "serverless-pre-function": {
      "phase": "rewrite",
      "functions": [
        "return function(conf, ctx)\n  local core = require(\"apisix.core\")\n  core.request.set_header(ctx, \"X-Access-Token\", nil)\nend\n"
      ]
    },
    "openid-connect": {
      "discovery": "https://sso.example.com/realms/acme/.well-known/openid-configuration",
      "client_id": "my-app",
      "client_secret": "${OIDC_CLIENT_SECRET}",
      "scope": "openid organization:*",
      "bearer_only": false,
      "session": { "secret": "${OIDC_SESSION_SECRET}" },
      "set_access_token_header": true,
      "access_token_in_authorization_header": false,
      "set_id_token_header": false,
      "set_userinfo_header": false,
      "set_refresh_token_header": false
    }
  }
}
JSON
