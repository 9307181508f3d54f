# One image that trains one cell folder: mount the folder at /cell and its data set read-only at /data.
#
#   podman build -t cs230-template .        (or: make image)
#   podman run --rm --userns=keep-id -v $PWD/experiments/x:/cell -v $PWD/data/digits:/data:ro cs230-template
#   ... the same with --restore_file last resumes it; docs/containers.md has docker, apptainer, GPUs and registries.
#
# BASE: a slim Python by default. PyTorch's Linux wheel carries its CUDA libraries, so this image already runs on
# GPUs (with the NVIDIA container toolkit); a CUDA base such as nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 (with
# python3-venv) is for what needs the system toolkit.
ARG BASE=python:3.11-slim
FROM ${BASE}

# Machine-specific pip settings (a mirror, a CA bundle, a wheel folder mounted into the build) come in as a build
# argument, never baked in for everyone, e.g. --build-arg PIP_OPTIONS="--find-links /wheels --no-index".
ARG PIP_OPTIONS=""

# At run time the image's own filesystem is read-only (the search passes --read-only): caches go to /tmp.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib

# Optional extras, each a requirements-NAME.txt of this repository, e.g. --build-arg EXTRAS="trackers export"
# (trackers: MLflow, W&B and TensorBoard for params key loggers, docs/trackers.md).
ARG EXTRAS=""

RUN python3 -m venv /opt/venv
# requirements first: editing the code rebuilds only the last layer, not the several-GB one
COPY requirements*.txt /app/
RUN pip install --no-cache-dir --disable-pip-version-check $PIP_OPTIONS -r /app/requirements.txt \
        $(for extra in $EXTRAS; do echo "-r /app/requirements-$extra.txt"; done)
COPY . /app
WORKDIR /app
RUN python -m compileall -q core model data utils.py train.py evaluate.py

VOLUME ["/cell"]
ENTRYPOINT ["python", "/app/train.py", "--model_dir", "/cell", "--data_dir", "/data"]
