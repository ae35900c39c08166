"""SASL/SCRAM logins and ACLs on an Apache Kafka node, as a production cluster has them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Scram:
    """SASL/SCRAM-SHA-512 logins and ACLs on a broker: `users` (name -> password) are created
    when its storage is formatted; `admin`, one of them, is the super user, the identity the
    broker itself uses on its own listener and the one that grants ACLs to the others."""

    users: Mapping[str, str]
    admin: str = "admin"
    mechanism: ClassVar[str] = "SCRAM-SHA-512"

    def client_config(self, user: str) -> dict[str, str]:
        """librdkafka's settings to log in as `user`."""
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": self.mechanism,
            "sasl.username": user,
            "sasl.password": self.users[user],
        }

    def properties(self) -> dict[str, str]:
        """The node's settings besides its listeners (SASL_PLAINTEXT, KafkaNode.config): the
        broker logs in to its own client listener as the admin with SCRAM; the controller's
        listener takes PLAIN, as SCRAM's credentials live in the metadata log that the
        controller serves."""
        password = self.users[self.admin]
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        login = f'username="{self.admin}" password="{password}"'
        return {
            "sasl.enabled.mechanisms": self.mechanism,
            "sasl.mechanism.inter.broker.protocol": self.mechanism,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
                f"{scram} required {login};"
            ),
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": (
                f'{plain} required {login} user_{self.admin}="{password}";'
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{self.admin}",
        }

    def format_arguments(self) -> list[str]:
        return [
            f"--add-scram={self.mechanism}=[name={name},password={password}]"
            for name, password in self.users.items()
        ]
