# The billing backend: one image for the API, the worker, beat and migrations.
#   docker build -t billing-backend .
#   docker run --env-file .env -p 8000:8000 billing-backend          # the API
#   docker run --env-file .env billing-backend billing worker        # a worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BILLING_DATA_DIR=/var/lib/billing

# A fixed uid/gid so volume ownership is predictable across rebuilds.
RUN groupadd --system --gid 10001 billing \
    && useradd --system --uid 10001 --gid billing --home-dir /var/lib/billing \
       --shell /usr/sbin/nologin billing \
    && mkdir -p /var/lib/billing \
    && chown billing:billing /var/lib/billing

WORKDIR /app
COPY . .
# Installed as root and left root-owned: the service cannot rewrite its own code.
RUN pip install . \
    && rm -rf build *.egg-info

USER billing
EXPOSE 8000
VOLUME ["/var/lib/billing"]

CMD ["billing", "api", "--host", "0.0.0.0"]
