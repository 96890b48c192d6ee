"""A minimal Django project behind identity-sidecar, logging users in with
mitol-django-apigateway from the X-Userinfo header the sidecar sets."""

import os
from pathlib import Path

from mitol.common.envs import import_settings_modules

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "only-for-the-test-project")
DEBUG = False
# The sidecar forwards the client's Host header.
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "mitol.apigateway.apps.ApigatewayApp",
    "users",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After AuthenticationMiddleware: reads X-Userinfo, creates and logs in the user.
    "mitol.apigateway.middleware.ApisixUserMiddleware",
]

AUTHENTICATION_BACKENDS = ["mitol.apigateway.backends.ApisixRemoteUserBackend"]
# The Keycloak subject (`sub`) is the user's key, as mitol-django-apigateway expects.
AUTH_USER_MODEL = "users.User"

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DATABASE", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# mitol-django-apigateway's defaults (header HTTP_X_USERINFO, id field `sub`, user creation
# on), then the field map with its documented additional_models example.
import_settings_modules("mitol.apigateway.settings")

MITOL_APIGATEWAY_USERINFO_MODEL_MAP = {
    "user_fields": {
        "preferred_username": "username",
        "email": "email",
        "sub": "global_id",
        "name": "name",
    },
    "additional_models": {
        # Custom Keycloak mapper claims: they reach the app only with the sidecar's
        # headers.userinfo_claims = ["*"] (or listed there by name).
        "users.UserProfile": [
            ("email_optin", "email_optin", False),
            ("country_code", "country_code", ""),
        ],
    },
}
