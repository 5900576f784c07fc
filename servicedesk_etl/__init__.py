"""servicedesk-etl: ServiceDesk SQLite snapshots into a verified, typed PostgreSQL schema."""

__version__ = "0.1.0"
