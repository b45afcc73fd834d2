# vaecf GPU image: TensorFlow 2.18 + CUDA 12, RAPIDS 25.6 (cuDF, dask-cuda), CuPy 13,
# Horovod 0.28.1 built with NCCL (GPU allreduce) and Gloo (launcher), entry point `vaecf`.
#
#   docker build -t vaecf:gpu .
#   docker run --rm --gpus all --shm-size=8g -v "$PWD/work:/work" vaecf:gpu \
#       prepare /work/ratings.csv --rating-col rating --min-rating 4 --backend gpu --out /work/ds
#   docker run --rm --gpus all --shm-size=8g -v "$PWD/work:/work" vaecf:gpu \
#       train --data /work/ds --gpus 8 --amp --out /work/run
#
# Not built on the development machines (they have no Docker engine); versions are pinned to
# the combination docs/design.md describes: TF 2.18 is the newest Horovod 0.28.1 compiles against,
# and it is built for CUDA 12.5 / cuDNN 9, which the devel base image below matches so that
# Horovod's CUDA/NCCL ops compile against the same toolkit.
FROM nvidia/cuda:12.5.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# NCCL headers + library for Horovod's GPU operations; cmake/g++ to build Horovod.
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-dev python3-venv python3-pip git cmake g++ \
        libnccl2=2.22.3-1+cuda12.5 libnccl-dev=2.22.3-1+cuda12.5 \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/vaecf
ENV PATH=/opt/vaecf/bin:$PATH
RUN pip install --upgrade "pip>=24" "setuptools>=69" wheel

# The GPU stack first (its own layer: it is by far the largest and changes least).
RUN pip install --extra-index-url=https://pypi.nvidia.com \
        "tensorflow[and-cuda]==2.18.1" \
        "cudf-cu12==25.6.*" "dask-cudf-cu12==25.6.*" "dask-cuda==25.6.*" \
        "cupy-cuda12x>=13.3,<14"

# Horovod from source against the TensorFlow above (it needs TF importable at build time).
RUN HOROVOD_WITH_TENSORFLOW=1 HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED \
    HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    pip install --no-build-isolation "horovod==0.28.1" \
    && python -c "import horovod.tensorflow as hvd; assert hvd.nccl_built() and hvd.gloo_built()"

COPY pyproject.toml README.md /src/
COPY vaecf /src/vaecf
COPY scripts /src/scripts
RUN pip install --extra-index-url=https://pypi.nvidia.com "/src[gpu,dask]" \
    && vaecf --help > /dev/null

WORKDIR /work
ENTRYPOINT ["vaecf"]
CMD ["--help"]
