# chexnet in a container: the image runs `chexnet`, the same command as on a laptop, under SLURM or MPI.
#
#   docker build -t chexnet:cpu .                                          # CPUs only (PyTorch's CPU wheels)
#   docker build -t chexnet:cuda --build-arg TORCH_VARIANT=cu128 .         # NVIDIA GPUs
#   docker build -t chexnet:cuda-tune --build-arg TORCH_VARIANT=cu128 --build-arg EXTRAS=tune,export .
#   docker run --rm -v $PWD/data:/data chexnet:cpu train --cache /data/cache/nih-256 --out /data/runs/r1 --config demo
#   docker build -t chexnet:serve --build-arg EXTRAS=serve,cam .             # the HTTP service
#   docker run --rm -p 127.0.0.1:8000:8000 -v $PWD/data:/data:ro chexnet:serve serve /data/runs/r1 --host 0.0.0.0
#
# TORCH_VARIANT names PyTorch's wheel index (https://download.pytorch.org/whl/<variant>): cpu, cu126, cu128, ...
# The CUDA wheels carry the CUDA runtime, cuDNN and NCCL, so one slim Python base serves both variants; a GPU node
# needs only the NVIDIA driver and the NVIDIA container toolkit (Kubernetes: the NVIDIA device plugin).
# EXTRAS: chexnet's optional extras, comma-separated (tune, export, cam, serve, spark, tensorboard); none by default.
# In a container `serve` must bind 0.0.0.0 to be reachable; publish the port on 127.0.0.1 or behind a TLS proxy.
# deploy/k8s/pytorchjob.yaml runs this image as a Kubeflow PyTorchJob.

ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VARIANT=cpu
ARG EXTRAS=

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch first, from the index of the chosen variant; the package's own requirements then find it satisfied.
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" torch torchvision

# The other requirements in a layer of their own, so that a change of the code does not reinstall them.
COPY pyproject.toml README.md /opt/chexnet/
RUN python -c "import tomllib; deps = tomllib.load(open('/opt/chexnet/pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY src /opt/chexnet/src
RUN pip install "/opt/chexnet${EXTRAS:+[$EXTRAS]}" \
    && chexnet --version

# Not root. Mount the cache and the run directory (e.g. at /data) writable by uid 1000 (Kubernetes: fsGroup 1000).
RUN useradd --create-home --uid 1000 chexnet
USER chexnet
WORKDIR /home/chexnet

ENTRYPOINT ["chexnet"]
CMD ["--help"]
