"""The user model mitol-django-apigateway fills: keyed by the Keycloak subject."""

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A user whose immutable key is Keycloak's `sub`."""

    global_id = models.CharField(max_length=255, unique=True)
    name = models.CharField(max_length=255, blank=True, default="")

    USERNAME_FIELD = "global_id"
    REQUIRED_FIELDS = ["username", "email"]


class UserProfile(models.Model):
    """Custom claims (Keycloak user-attribute mappers), filled through additional_models."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    email_optin = models.BooleanField(default=False)
    country_code = models.CharField(max_length=2, blank=True, default="")
