FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY worker ./worker
COPY client ./client
RUN pip install --no-cache-dir '.[fast]'
EXPOSE 8000
CMD ["redchat-gateway", "--host", "0.0.0.0"]
