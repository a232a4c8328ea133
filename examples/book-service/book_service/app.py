"""The HTTP API: books, reviews, the audit trail, and a probe. `build_app` wires it all together.

Who may do what is decided twice. The sidecar's policy decides by role and path before a request
gets here; this service checks only what it knows best: a change needs an asserted subject (an
anonymous caller may read, never write), a review belongs to its reviewer (admins may delete any),
and the audit trail is for admins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from book_service import validation
from book_service.errors import (
    ApiError,
    render_api_error,
    render_http_error,
    render_internal_error,
    request_id,
)
from book_service.keys import AssertionKeys
from book_service.settings import Settings
from book_service.store import Actor, BookStore
from book_service.trust import AssertionVerifier, Caller, RequireAssertion, caller_of

Endpoint = Callable[[Request], Awaitable[Response]]
MAX_PAGE = 1000
DEFAULT_PAGE = 100


def build_app(settings: Settings) -> Starlette:
    """The service as an ASGI app; its database and key cache close with the app's lifespan."""
    store = BookStore(settings.db)
    keys = AssertionKeys(settings.jwks_url, cooldown=settings.jwks_cooldown, max_age=settings.jwks_max_age)
    verifier = AssertionVerifier(keys, audience=settings.assertion_audience, leeway=settings.assertion_leeway)
    api = BookApi(store, admin_role=settings.admin_role)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await keys.aclose()
            store.close()

    app = Starlette(
        routes=api.routes(),
        middleware=[Middleware(RequireAssertion, verifier=verifier)],
        exception_handlers={
            ApiError: render_api_error,
            HTTPException: render_http_error,
            Exception: render_internal_error,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.keys = keys
    return app


class BookApi:
    def __init__(self, store: BookStore, *, admin_role: str) -> None:
        self.store = store
        self.admin_role = admin_role

    def routes(self) -> list[Route]:
        return [
            by_method("/healthz", GET=self.health),
            by_method("/books", GET=self.list_books, POST=self.create_book),
            by_method(
                "/books/{book_id}",
                GET=self.get_book,
                PUT=self.replace_book,
                PATCH=self.patch_book,
                DELETE=self.delete_book,
            ),
            by_method("/books/{book_id}/reviews", GET=self.list_reviews),
            by_method("/books/{book_id}/reviews/{reviewer}", PUT=self.put_review, DELETE=self.delete_review),
            by_method("/audit", GET=self.audit),
        ]

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    # books

    async def list_books(self, request: Request) -> Response:
        limit = validation.query_int(request, "limit", default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
        offset = validation.query_int(request, "offset", default=0, minimum=0, maximum=10**12)
        books = await run_in_threadpool(self.store.list_books, limit=limit, offset=offset)
        return JSONResponse({"books": [book.to_json() for book in books], "limit": limit, "offset": offset})

    async def create_book(self, request: Request) -> Response:
        actor = self.actor(request)
        fields = validation.book_fields(await validation.json_object(request), partial=False)
        book = await run_in_threadpool(self.store.create_book, fields, actor)
        return JSONResponse(book.to_json(), status_code=201, headers={"Location": f"/books/{book.id}"})

    async def get_book(self, request: Request) -> Response:
        book = await run_in_threadpool(self.store.get_book, path_book_id(request))
        if book is None:
            raise no_such_book()
        return JSONResponse(book.to_json())

    async def replace_book(self, request: Request) -> Response:
        return await self.update_book(request, partial=False)

    async def patch_book(self, request: Request) -> Response:
        return await self.update_book(request, partial=True)

    async def update_book(self, request: Request, *, partial: bool) -> Response:
        actor = self.actor(request)
        book_id = path_book_id(request)
        fields = validation.book_fields(await validation.json_object(request), partial=partial)
        book = await run_in_threadpool(self.store.update_book, book_id, fields, actor)
        if book is None:
            raise no_such_book()
        return JSONResponse(book.to_json())

    async def delete_book(self, request: Request) -> Response:
        actor = self.actor(request)
        if not await run_in_threadpool(self.store.delete_book, path_book_id(request), actor):
            raise no_such_book()
        return Response(status_code=204)

    # reviews

    async def list_reviews(self, request: Request) -> Response:
        reviews = await run_in_threadpool(self.store.list_reviews, path_book_id(request))
        if reviews is None:
            raise no_such_book()
        return JSONResponse({"reviews": [review.to_json() for review in reviews]})

    async def put_review(self, request: Request) -> Response:
        actor = self.actor(request)
        book_id, reviewer = path_book_id(request), path_reviewer(request)
        if reviewer != actor.subject:
            # Not even admins write in someone else's name.
            raise ApiError(403, "not_your_review", "you may only write your own review")
        rating, text = validation.review_fields(await validation.json_object(request))
        outcome = await run_in_threadpool(self.store.put_review, book_id, reviewer, rating, text, actor)
        if outcome is None:
            raise no_such_book()
        review, created = outcome
        return JSONResponse(review.to_json(), status_code=201 if created else 200)

    async def delete_review(self, request: Request) -> Response:
        actor = self.actor(request)
        book_id, reviewer = path_book_id(request), path_reviewer(request)
        if reviewer != actor.subject and not caller_of(request.scope).has_role(self.admin_role):
            raise ApiError(403, "not_your_review", "you may only delete your own review")
        deleted = await run_in_threadpool(self.store.delete_review, book_id, reviewer, actor)
        if deleted is None:
            raise no_such_book()
        if not deleted:
            raise ApiError(404, "not_found", "no such review")
        return Response(status_code=204)

    # audit

    async def audit(self, request: Request) -> Response:
        caller = self.subject_caller(request)
        if not caller.has_role(self.admin_role):
            raise ApiError(403, "admin_required", "the audit trail is for admins")
        limit = validation.query_int(request, "limit", default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
        book_id = validation.optional_query_int(request, "book_id", minimum=1, maximum=2**63 - 1)
        subject = validation.query_text(request, "subject")
        entries = await run_in_threadpool(self.store.audit, limit=limit, book_id=book_id, subject=subject)
        return JSONResponse({"entries": [entry.to_json() for entry in entries]})

    # who is calling

    def subject_caller(self, request: Request) -> Caller:
        caller = caller_of(request.scope)
        if caller.is_anonymous:
            raise ApiError(401, "subject_required", "this needs an authenticated caller, not anonymous")
        return caller

    def actor(self, request: Request) -> Actor:
        """Whom a change is recorded against; only an asserted subject may change anything."""
        caller = self.subject_caller(request)
        assert caller.subject is not None
        return Actor(subject=caller.subject, request_id=request_id(request.scope))


def by_method(path: str, **handlers: Endpoint) -> Route:
    """One route per path, so a wrong method is 405 with the path's full Allow list."""
    handlers_by_method: Mapping[str, Endpoint] = dict(handlers)

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers_by_method[method](request)

    return Route(path, endpoint, methods=list(handlers_by_method))


def path_book_id(request: Request) -> int:
    return validation.book_id(request.path_params["book_id"])


def path_reviewer(request: Request) -> str:
    return validation.reviewer_name(request.path_params["reviewer"])


def no_such_book() -> ApiError:
    return ApiError(404, "not_found", "no such book")
