"""gunicorn settings for the Django app behind identity-sidecar.

Run from the project directory: gunicorn -c gunicorn.conf.py
"""

wsgi_app = "project.wsgi:application"
# Only the sidecar may reach the app: listen on loopback (or a network only it is on).
bind = "127.0.0.1:8000"
workers = 2
# gunicorn's default: headers spelled with underscores (X_Userinfo) are dropped. The sidecar
# strips every spelling of its headers before the app sees the request, so even
# header_map = "dangerous" lets no client-made X-Userinfo through.
header_map = "drop"
# gunicorn's default line limit; X-Userinfo stays under it (headers.max_userinfo_bytes = 8000).
limit_request_field_size = 8190
# gunicorn 25+ opens a control socket at one fixed path per user; two gunicorns on one host
# would share it.
control_socket_disable = True
