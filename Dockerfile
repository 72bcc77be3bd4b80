# One image for every promptbatch service (runner, console, migrate, simulator).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY db ./db
COPY runner ./runner
COPY console ./console
RUN pip install . \
    && useradd --create-home --uid 10001 promptbatch

USER promptbatch
EXPOSE 8501 8787
CMD ["promptbatch", "--help"]
