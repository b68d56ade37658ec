# The vq-tokenizer service on CPU: `docker build -t vq-tokenizer . && docker run -p 8000:8000 vq-tokenizer`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --gid 10001 vq \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin vq
WORKDIR /app

# constraints.txt pins torch; the CPU wheel index keeps the CUDA stack (gigabytes) out.
COPY pyproject.toml README.md constraints.txt ./
COPY vq ./vq
COPY vqio ./vqio
COPY train ./train
COPY service ./service
RUN pip install --no-cache-dir -c constraints.txt \
        --extra-index-url https://download.pytorch.org/whl/cpu . \
    && python -c "import torch; assert not torch.version.cuda, torch.__version__"

# The shipped tokenizer (config.json + model.safetensors + card.md).
COPY models/default ./models/default

USER 10001:10001
ENV VQ_MODELS=default=/app/models/default \
    VQ_PORT=8000
EXPOSE 8000
# Readiness, not just liveness: /readyz is 503 while the models load and from the moment
# SIGTERM arrives (draining), so `docker ps` and Swarm route only to a container that can
# take work. Orchestrators with separate probes: liveness on /healthz, readiness on /readyz
# (docs/operations.md). `docker stop` sends SIGTERM: give it more than VQ_DRAIN_TIMEOUT_S,
# e.g. `docker stop -t 80`, so in-flight requests finish before SIGKILL.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('VQ_PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["vq-serve", "--host", "0.0.0.0"]
