# CPU image by default:
#   docker build -t bbopt .
# CUDA image (GPU actors, meta-training on GPUs):
#   docker build -t bbopt:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# Run: docker run --rm -v $PWD:/data bbopt tune ... --storage sqlite:////data/study.db
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1

# CUDA base images ship no Python: install one and use a virtual environment either way.
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    elif ! python3 -m venv --help >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the index that matches the image (CPU or CUDA build)
RUN pip install --upgrade pip && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /opt/bbopt
COPY pyproject.toml README.md ./
COPY bbopt ./bbopt
COPY tasks ./tasks
RUN pip install ".[peers,postgres]"

WORKDIR /data
ENTRYPOINT ["bbopt"]
CMD ["--help"]
