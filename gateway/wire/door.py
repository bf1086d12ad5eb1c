"""The wire session's view of the privacy pipeline: ``QueryService`` for one logged-in principal.

Every data statement re-reads the principal, and re-checks that the credential it logged in
with is still valid, so a revoked key, a disabled principal or changed grants take effect on
open connections at their next statement, as on REST.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import WireAuthFailed
from gateway.principals import Principal, PrincipalStore
from gateway.service import CallContext, QueryFailed, QueryRequest, QueryService
from rewriter.catalog import Catalog
from rewriter.plan import QueryPlan


class ServiceDoor:
    def __init__(
        self,
        *,
        service: QueryService,
        principals: PrincipalStore,
        name: str,
        credential: str,
        client: str,
    ) -> None:
        self._service = service
        self._principals = principals
        self._name = name
        self._credential = credential
        self._client = client

    @property
    def catalog(self) -> Catalog:
        return self._service.catalog

    def table_names(self) -> frozenset[str]:
        return frozenset(self._service.catalog.tables)

    def principal(self) -> Principal | None:
        return self._principals.wire_login_valid(self._name, self._credential)

    def _ctx(self) -> CallContext:
        found = self.principal()
        if found is None:
            raise QueryFailed(
                WireAuthFailed("the credential this connection logged in with is no longer valid"),
                None,
            )
        return CallContext(principal=found, door="wire", client=self._client)

    def describe(self, sql: str, epsilon: str | None) -> QueryPlan:
        return self._service.describe(QueryRequest(sql=sql, epsilon=epsilon), self._ctx())

    def run(self, sql: str, epsilon: str | None) -> dict[str, Any]:
        return self._service.run(QueryRequest(sql=sql, epsilon=epsilon), self._ctx())

    def reject(self, sql: str, exc: BaseException) -> QueryFailed:
        return self._service.reject(QueryRequest(sql=sql), self._ctx(), exc)
