"""One view: who the request is logged in as."""

from django.urls import path

from users.views import me

urlpatterns = [path("me", me)]
