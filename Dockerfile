# CPU image: installs deployc the same way the README does (torch 2.13.0 CPU build pinned first).
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 DEPLOYC_CACHE_DIR=/cache
WORKDIR /opt/deployc
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY passes ./passes
COPY targets ./targets
COPY commands ./commands
COPY examples ./examples
COPY sweep ./sweep
RUN pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL" \
 && pip install ".[tflite]" "torch==2.13.0" --extra-index-url "$TORCH_INDEX_URL"
WORKDIR /work
ENTRYPOINT ["deployc"]
CMD ["--help"]
