"""Extra hub pages: the user's datasets (``/hub/datasets``), one dataset's page
(``/hub/datasets/<pid>``, its thumbnail at ``/hub/datasets/<pid>/thumbnail.png``) and the
deep link ``/hub/open``.

``/hub/open?dataset=PID[&type=desktop]`` is what a catalogue's "open in portal" button
points at: it checks access with the catalogue, picks the environment by technique, and
starts (or reuses) a named server that opens in the dataset's folder. Whatever it passes
on is checked again by the spawner at start. ``/hub/course/<name>`` does the same for a
trainer's course, and ``/hub/course/<name>/students`` shows trainers who started it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from jupyterhub import orm
from jupyterhub.handlers import BaseHandler
from jupyterhub.utils import url_path_join
from tornado import web

from portal.catalogue import CatalogueError, Dataset, DatasetNotFound, PortalCatalogue, techniques
from portal.catalogue.base import Catalogue, DatasetPage
from portal.catalogue.model import CatalogueUser, Thumbnail
from spawner.common import spawn_query, trusted_navigation, user_from_auth_state
from spawner.course_format import SERVER_PREFIX, CourseError, load_course, server_name
from spawner.course_library import CourseLibrary, CourseUnavailable
from spawner.environments import SERVER_TYPES, load_environments
from spawner.form import human_size
from spawner.options import pick_environment

#: Datasets per page of /hub/datasets.
PAGE_SIZE = 50
#: The pictures a catalogue's thumbnail may be served as; anything else is not served.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
#: One answer for an unknown pid, a pid this user may not read, and a dataset without a
#: thumbnail: nothing tells them apart.
NOT_FOUND = "There is no dataset at this address, or you do not have access to it."


def server_name_for(dataset: Dataset, server_type: str, taken: set[str]) -> str:
    """A valid JupyterHub server name like ``lab-ceo2-powder-0001``, unique among ``taken``."""
    stem = re.sub(r"[^a-z0-9]+", "-", dataset.pid.rsplit("/", 1)[-1].lower()).strip("-")
    name = f"{server_type}-{stem}"[:30].rstrip("-") or server_type
    if name not in taken:
        return name
    digest = hashlib.sha256(dataset.pid.encode()).hexdigest()[:6]
    return f"{name[:23].rstrip('-')}-{digest}"


def new_server_name(server_type: str, taken: set[str]) -> str:
    """``lab-1``, ``desktop-2``: the first free name for a session started without a dataset,
    in the same ``<type>-<what>`` shape as :func:`server_name_for` (the spawn form reads the
    type back from it)."""
    n = 1
    while f"{server_type}-{n}" in taken:
        n += 1
    return f"{server_type}-{n}"


class PortalPage(BaseHandler):
    """Common to our pages: the catalogue and the current user as the catalogue sees them."""

    @property
    def catalogue(self) -> Any:
        return PortalCatalogue.instance(config=self.settings["config"], log=self.log).catalogue

    async def catalogue_user(self) -> Any:
        user = self.current_user
        return user_from_auth_state(user.name, await user.get_auth_state())

    @property
    def server_types(self) -> tuple[str, ...]:
        return getattr(self.settings["spawner_class"], "supported_server_types", ("lab",))

    async def confirm(self, heading: str, message: str, button: str) -> None:
        """A page with one button that POSTs back here with the XSRF token."""
        html = await self.render_template(
            "confirm.html", heading=heading, message=message, button=button
        )
        self.finish(html)

    async def refuse(self, status: int, message: str) -> None:
        """A clear page instead of a stack trace, with the way back to the datasets."""
        self.set_status(status)
        self.finish(
            await self.render_template(
                "error.html",
                status_code=status,
                status_message={403: "Forbidden", 404: "Not found"}.get(status, "Unavailable"),
                message=message,
                extra_error_html=(
                    f'<a class="btn btn-jupyter" href="{self.hub.base_url}datasets">'
                    "Back to your datasets</a>"
                ),
            )
        )


class DatasetsHandler(PortalPage):
    """Search the datasets the user may read, and open one in JupyterLab or a desktop."""

    @web.authenticated
    async def get(self) -> None:
        text = self.get_argument("q", "").strip()
        technique = self.get_argument("technique", "").strip()
        proposal = self.get_argument("proposal", "").strip()
        try:
            offset = max(0, int(self.get_argument("offset", "0")))
        except ValueError:
            offset = 0
        user = await self.catalogue_user()
        problem = ""
        page = DatasetPage((), 0, offset, PAGE_SIZE)
        try:
            page = await asyncio.to_thread(
                self.catalogue.search_page,
                user,
                text=text,
                technique=technique,
                proposal=proposal,
                limit=PAGE_SIZE,
                offset=offset,
            )
        except techniques.UnknownTechnique as e:  # say which, and how to write it
            problem = str(e)
        except CatalogueError as e:  # down, slow, nonsense, or refusing the user's token
            problem = f"The catalogue cannot answer right now: {e}"
        filters = {
            k: v for k, v in (("q", text), ("technique", technique), ("proposal", proposal)) if v
        }

        def at(start: int) -> str:
            return (
                "?" + urlencode({**filters, "offset": start}) if start else "?" + urlencode(filters)
            )

        html = await self.render_template(
            "datasets.html",
            datasets=[(d, ", ".join(d.technique_names), human_size(d.size)) for d in page.datasets],
            q=text,
            technique=technique,
            proposal=proposal,
            problem=problem,
            server_types=self.server_types,
            first=offset + 1 if page.datasets else 0,
            last=offset + len(page.datasets),
            total=page.total,
            previous=at(max(0, offset - PAGE_SIZE)) if offset else "",
            next=at(offset + PAGE_SIZE) if offset + PAGE_SIZE < page.total else "",
        )
        self.finish(html)


def availability(dataset: Dataset) -> str:
    """Public or embargoed, in words: what a researcher asks before sharing a link."""
    today = datetime.now(UTC).date()
    if dataset.is_public(today):
        since = dataset.public_date
        return f"Public since {since.isoformat()}" if since and since.year > 1 else "Public"
    if dataset.public_date:
        return f"Embargoed until {dataset.public_date.isoformat()}"
    return "Not public: readable by its proposal's members and those granted access"


class DatasetHandler(PortalPage):
    """``/hub/datasets/<pid>``: what a dataset is, before anyone opens it."""

    @web.authenticated
    async def get(self, pid: str) -> None:
        user = await self.catalogue_user()
        try:
            dataset = await asyncio.to_thread(self.catalogue.get, pid, user)
            picture, tree = await asyncio.gather(
                asyncio.to_thread(self.catalogue.thumbnail, dataset, user),
                asyncio.to_thread(self.catalogue.nexus_tree, dataset, user),
            )
        except DatasetNotFound:
            return await self.refuse(404, NOT_FOUND)
        except CatalogueError as e:
            return await self.refuse(503, f"The catalogue cannot answer right now: {e}")
        inputs = []  # a derived dataset's inputs: linked only where this viewer may read them
        for input_pid in dataset.inputs:
            try:
                await asyncio.to_thread(self.catalogue.get, input_pid, user)
                inputs.append((input_pid, True))
            except CatalogueError:
                inputs.append((input_pid, False))
        html = await self.render_template(
            "dataset.html",
            inputs=inputs,
            dataset=dataset,
            techniques=", ".join(dataset.technique_names),
            size=human_size(dataset.size),
            availability=availability(dataset),
            has_thumbnail=picture is not None,
            tree=tree,
            server_types=self.server_types,
        )
        self.finish(html)


#: Thumbnails asked of the catalogue at once, hub-wide: a list page asks for 50, each in a
#: worker thread shared with spawns, and a slow catalogue must not hold every thread.
THUMBNAIL_FETCHES = 4
_thumbnail_slots = asyncio.Semaphore(THUMBNAIL_FETCHES)


async def fetch_thumbnail(catalogue: Catalogue, pid: str, user: CatalogueUser) -> Thumbnail | None:
    """The picture of ``pid`` if ``user`` may read it (asked with :meth:`Catalogue.get`
    first), at most :data:`THUMBNAIL_FETCHES` at a time; raises as ``get`` does."""
    async with _thumbnail_slots:
        dataset = await asyncio.to_thread(catalogue.get, pid, user)
        return await asyncio.to_thread(catalogue.thumbnail, dataset, user)


class DatasetThumbnailHandler(PortalPage):
    """``/hub/datasets/<pid>/thumbnail.png``: the dataset's picture, for those who may read
    it; the same plain 404 for everyone and everything else."""

    @web.authenticated
    async def get(self, pid: str) -> None:
        user = await self.catalogue_user()
        picture: Thumbnail | None = None
        try:
            picture = await fetch_thumbnail(self.catalogue, pid, user)
        except DatasetNotFound:
            pass
        except CatalogueError as e:
            return self.plain(503, f"The catalogue cannot answer right now: {e}")
        if picture is None or picture.content_type not in IMAGE_TYPES:
            return self.plain(404, NOT_FOUND)
        self.set_header("Content-Type", picture.content_type)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "private, no-cache")  # asked again after a logout
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        self.finish(picture.data)

    def plain(self, status: int, message: str) -> None:
        """A short text answer: an image request needs no page."""
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.finish(message)


class OpenHandler(PortalPage):
    """``/hub/open?dataset=PID[&type=desktop]``: the catalogue's "open in portal" link."""

    @web.authenticated
    async def get(self) -> None:
        """Straight to the server from the portal's own pages; a Start button otherwise.

        Without ``dataset`` (the home page's "New JupyterLab" and "New desktop"): the spawn
        form of a new named server of that type. Nothing starts before the form is posted.
        """
        if "dataset" not in self.request.arguments:
            server_type = self.get_argument("type", "lab")
            if server_type not in SERVER_TYPES or server_type not in self.server_types:
                return await self.refuse(400, f"This portal cannot open a {server_type!r} server.")
            user = self.current_user
            name = new_server_name(server_type, {n for n, s in user.spawners.items() if s.active})
            return self.redirect(url_path_join(self.hub.base_url, "spawn", user.escaped_name, name))
        dataset, server_type = await self.dataset()
        if dataset is None or trusted_navigation(self.request):
            return await self.open(dataset, server_type)
        kind = "a remote desktop" if server_type == "desktop" else "JupyterLab"
        await self.confirm(
            f"Open “{dataset.title}”",
            f"Start {kind} with the dataset {dataset.pid} (proposal {dataset.proposal or '-'})"
            " mounted read-only in ~/datasets?",
            "Start",
        )

    @web.authenticated
    async def post(self) -> None:
        await self.open(*await self.dataset())

    async def dataset(self) -> tuple[Dataset | None, str]:
        """The dataset asked for if this user may read it; else the refusal is sent."""
        pid = self.get_argument("dataset", "")
        server_type = self.get_argument("type", "lab")
        if server_type not in SERVER_TYPES or server_type not in self.server_types:
            await self.refuse(
                400,
                f"This portal cannot open a {server_type!r} server;"
                f" it offers {', '.join(self.server_types)}.",
            )
            return None, server_type
        try:
            found = await asyncio.to_thread(self.catalogue.get, pid, await self.catalogue_user())
        except DatasetNotFound as e:
            await self.refuse(404, f"Cannot open this dataset: {e}.")
            return None, server_type
        except CatalogueError as e:
            await self.refuse(503, f"The catalogue cannot answer right now: {e}")
            return None, server_type
        return found, server_type

    async def open(self, dataset: Dataset | None, server_type: str) -> None:
        if dataset is None:
            return  # refused, and said why
        pid = dataset.pid
        user = self.current_user
        for name, spawner in user.spawners.items():
            options = spawner.user_options or {}
            if (
                name
                and spawner.active
                and options.get("type") == server_type
                and options.get("datasets") == [pid]
            ):
                return self.redirect(user.server_url(name))
        running = {n for n, s in user.spawners.items() if s.active}
        name = server_name_for(dataset, server_type, running)
        environment = pick_environment([dataset], load_environments(), server_type)
        options = {"type": [server_type], "environment": [environment.name], "datasets": [pid]}
        query = spawn_query(self.settings["cookie_secret"], user.name, name, options)
        spawn = url_path_join(self.hub.base_url, "spawn", user.escaped_name, name)
        self.redirect(f"{spawn}?{urlencode(query)}")


class CourseHandler(PortalPage):
    """``/hub/course/<name>``: a trainer's course, for a student, in one click.

    Starts (or reuses) the student's server for the course (``course-<name>``, shortened by
    :func:`~spawner.course_format.server_name` if JupyterHub needs it) in the course's environment
    with the course's datasets, and opens its first notebook. The spawner delivers the course
    into ``~/courses/<name>/`` when the server starts; opening the link again fetches a git
    course and delivers the trainer's updates to a running server too, merged with the
    student's edits (:mod:`spawner.course_library`). The local and Docker backends deliver courses.
    """

    @web.authenticated
    async def get(self, name: str) -> None:
        """Straight into the course from the portal's own pages; a Start button otherwise."""
        if trusted_navigation(self.request):
            return await self.start(name)
        library = CourseLibrary.instance(config=self.settings["config"], log=self.log)
        if name not in library.courses:
            return await self.refuse(404, f"There is no course {name!r} on this portal.")
        await self.confirm(
            f"Start the course “{name}”",
            "Start (or open again) your copy of this course: its notebooks are delivered to"
            f" ~/courses/{name}/, keeping your own edits.",
            "Start the course",
        )

    @web.authenticated
    async def post(self, name: str) -> None:
        await self.start(name)

    async def start(self, name: str) -> None:
        library = CourseLibrary.instance(config=self.settings["config"], log=self.log)
        try:
            course = load_course(await asyncio.to_thread(library.folder, name, True))
        except CourseUnavailable as e:
            status = 404 if name not in library.courses else 503
            return await self.refuse(status, f"Cannot open this course: {e}.")
        except CourseError as e:
            return await self.refuse(503, f"The course {name!r} is broken; tell its trainer: {e}")
        user = await self.catalogue_user()
        for pid in course.datasets:
            try:
                await asyncio.to_thread(self.catalogue.get, pid, user)
            except DatasetNotFound:
                return await self.refuse(
                    403,
                    f"The course \u201c{course.title}\u201d uses the dataset {pid}, which you"
                    " may not read. Ask the course's trainer to give you access.",
                )
            except CatalogueError as e:
                return await self.refuse(503, f"The catalogue cannot answer right now: {e}")
        owner = self.current_user
        server = server_name(name)
        spawner = owner.spawners.get(server)
        if spawner is not None and spawner.ready and hasattr(spawner, "sync_course"):
            try:
                await spawner.sync_course()
            except CourseUnavailable as e:
                return await self.refuse(503, f"Cannot deliver the course's updates: {e}")
        first = quote(f"lab/tree/courses/{name}/{course.notebooks[0]}")
        options = {
            "type": ["lab"],
            "environment": [course.environment],
            "datasets": list(course.datasets),
        }
        query = [
            *spawn_query(self.settings["cookie_secret"], owner.name, server, options),
            ("next", url_path_join(owner.server_url(server), first)),
            ("display_name", SERVER_PREFIX + name),  # the home page's name for a shortened one
        ]
        spawn = url_path_join(self.hub.base_url, "spawn", owner.escaped_name, server)
        self.redirect(f"{spawn}?{urlencode(query)}")


class CourseStudentsHandler(PortalPage):
    """``/hub/course/<name>/students``: who has started a course, for its trainers and admins.

    A student has started a course when they have its server (:func:`server_name`), running or
    stopped; the hub's database already knows, so nothing else is recorded.
    """

    @web.authenticated
    async def get(self, name: str) -> None:
        library = CourseLibrary.instance(config=self.settings["config"], log=self.log)
        if name not in library.courses:
            return await self.refuse(404, f"There is no course {name!r} on this portal.")
        groups = (await self.catalogue_user()).groups
        admin = self.current_user.admin or "admin-ui" in self.expanded_scopes
        if not (admin or groups & set(library.trainer_groups)):
            return await self.refuse(403, "Only trainers see who started a course.")
        server = server_name(name)
        rows = self.db.query(orm.Spawner).filter(orm.Spawner.name == server).all()
        students = sorted(rows, key=lambda s: s.user.name)
        html = await self.render_template(
            "course_students.html", course=name, server=server, students=students
        )
        self.finish(html)
