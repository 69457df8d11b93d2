# One image for every role: sweep driver, Ray head/worker, MLflow server.
# For GPU nodes build FROM an NVIDIA CUDA runtime image instead; torch's wheel brings its own CUDA.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sweep ./sweep
COPY models ./models
COPY optim ./optim
COPY conf ./conf
RUN pip install --no-cache-dir -e .
ENTRYPOINT []
