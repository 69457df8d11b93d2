# One image for every role: Ray head and workers (the sweep driver runs on the head as a Ray job),
# the MLflow server and the submitter. Head and workers must share the Python and Ray versions,
# so the GPU image differs only in its torch wheel: PyPI's Linux wheels bundle CUDA (the host
# needs only the NVIDIA driver and container toolkit); the CPU default keeps the image small.
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch>=2.4,<2.15" "torchvision>=0.19,<0.30"
COPY pyproject.toml README.md ./
COPY sweep ./sweep
COPY models ./models
COPY optim ./optim
COPY conf ./conf
# [s3]: boto3, for the MLflow server's s3:// artifact destination (clients go through its proxy)
RUN pip install --no-cache-dir -e ".[s3]"
ENTRYPOINT []
