"""The fields of the logged-in user as JSON, so the test sees what the app stored."""

from django.http import JsonResponse

from users.models import UserProfile


def me(request):
    """The request's user: anonymous, or the fields mitol-django-apigateway mapped."""
    user = request.user
    if not user.is_authenticated:
        return JsonResponse({"authenticated": False})
    profile = UserProfile.objects.filter(user=user).first()
    return JsonResponse(
        {
            "authenticated": True,
            "global_id": user.global_id,
            "username": user.username,
            "email": user.email,
            "name": user.name,
            "profile": None
            if profile is None
            else {"email_optin": profile.email_optin, "country_code": profile.country_code},
        }
    )
