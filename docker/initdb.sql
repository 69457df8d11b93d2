-- Optuna and MLflow both keep an alembic_version table, so each gets its own database.
CREATE DATABASE optuna;
CREATE DATABASE mlflow;
