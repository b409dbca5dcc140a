"""The broker's configuration: one YAML file, validated by pydantic models."""

from broker.config.loader import ConfigError, Problem, load_config, parse_config
from broker.config.models import BrokerConfig

__all__ = ["BrokerConfig", "ConfigError", "Problem", "load_config", "parse_config"]
