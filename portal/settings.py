"""``portal.yaml``: the friendly configuration, validated with line-precise errors.

Validated as every YAML file of the portal is (:mod:`portal.yamlfile`): a site admin reads
``portal.yaml:12: auth.issuer: ...`` instead of a traceback. :mod:`portal.render` turns a
valid :class:`PortalSettings` into traitlets config for JupyterHub.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    Field,
    field_validator,
    model_validator,
)

from portal.yamlfile import Document, Strict, YamlFileError
from spawner.course_format import CourseSource, check_names


class SettingsError(YamlFileError):
    """``portal.yaml`` is unreadable or invalid; ``str()`` is a message for a person."""


Section = Strict


class HubSettings(Section):
    ip: str = Field("127.0.0.1", description="Address the hub's public proxy listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port users connect to.")
    base_url: str = Field("/", pattern=r"^/", description="URL prefix, e.g. /portal/.")
    public_url: AnyHttpUrl | None = Field(
        None, description="The URL users reach, if behind a reverse proxy (https://...)."
    )
    state_dir: Path = Field(Path("state"), description="Database, secrets, catalogue index.")
    db_url: str | None = Field(None, description="Default: SQLite in state_dir.")
    admin_users: list[str] = Field(default_factory=list)
    admin_access: bool = Field(
        False,
        description="Let admins enter users' servers, start them (with the users' data) and"
        " read their tokens, as JupyterHub's default admin role does. Default: admins manage"
        " users and stop servers, and see only the data they may read themselves.",
    )


class AuthSettings(Section):
    issuer: AnyHttpUrl
    client_id: str = Field(min_length=1)
    client_secret: str | None = None
    callback_url: AnyHttpUrl | None = None
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    username_claims: list[str] = Field(
        default_factory=lambda: ["preferred_username", "email", "sub"], min_length=1
    )
    groups_claim: str = "groups"
    group_prefixes: list[str] = Field(default_factory=list)
    proposals_claim: str = "proposals"
    allowed_groups: list[str] = Field(default_factory=list)
    admin_groups: list[str] = Field(default_factory=list)
    allow_all: bool = False
    login_label: str = "Umbrella"
    login_logo: str = Field("", description="Logo on the login button: a URL or data: URI.")
    discovery_timeout: float = Field(30.0, gt=0)
    request_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for the provider on each request."
    )
    tls_verify: bool = True
    token_endpoint_auth: Literal["client_secret_basic", "client_secret_post"] = Field(
        "client_secret_basic", description="How the hub authenticates to the token endpoint."
    )
    refresh_margin: float = Field(
        120.0, ge=0, description="Refresh tokens expiring within this many seconds before a spawn."
    )
    id_token_leeway: float = Field(60.0, ge=0, le=600, description="Clock skew allowed (s).")


class LocalCatalogueSettings(Section):
    data_root: Path
    index_path: Path | None = None


class HttpCatalogueSettings(Section):
    """An HTTP catalogue; each key sets the trait of the same name, unset keys keep its default."""

    url: AnyHttpUrl
    timeout: float | None = Field(None, gt=0, description="Seconds per request (default 10).")
    retries: int | None = Field(
        None, ge=0, le=10, description="Extra attempts after a 5xx or connection error (2)."
    )
    cache_ttl: float | None = Field(
        None, ge=0, description="Seconds an answer is reused for the same user and token (30)."
    )
    page_size: int | None = Field(None, ge=1, description="Records per request (500).")


class SciCatCatalogueSettings(HttpCatalogueSettings):
    """SciCat's current backend: ``url`` is the server, without ``/api/...``."""

    api_version: Literal["v4", "v3"] | None = Field(
        None, description="v4 (/api/v4/datasets, the default) or v3 (/api/v3/Datasets)."
    )
    auth_mode: Literal["user", "service"] | None = Field(
        None,
        description="user (default): each user's own SciCat token, from their ID token;"
        " service: a functional account, the portal filtering by the user's identity.",
    )
    service_username: str | None = Field(
        None, description="service mode: the account (password in SCICAT_SERVICE_PASSWORD)."
    )
    admin_groups: list[str] | None = Field(
        None, description="SciCat's ADMIN_GROUPS, whose members read every dataset."
    )
    trusted_writers: list[str] | None = Field(
        None,
        description="SciCat accounts (the ingestors) whose datasets' sourceFolder is mounted;"
        " datasets written by anyone else are listed but never mounted.",
    )


class SearchApiCatalogueSettings(HttpCatalogueSettings):
    """A PaNOSC Search API: ``url`` is its API root, ``/api`` included."""

    token_header: str | None = Field(
        None, description="Header carrying the user's token; the reference needs none."
    )
    location_template: str | None = Field(
        None, description="Storage location from {files_path}, {proposal}, {instrument}, ..."
    )


#: The section each catalogue backend reads, and the key it needs at least.
_CATALOGUE_SECTIONS = {
    "local": ("local", "data_root: /path/to/data"),
    "scicat": ("scicat", "url: https://scicat.example-facility.eu"),
    "search-api": ("search_api", "url: https://search.example-facility.eu/api"),
}


class CatalogueSettings(Section):
    backend: Literal["local", "scicat", "search-api"] = "local"
    local: LocalCatalogueSettings | None = None
    scicat: SciCatCatalogueSettings | None = None
    search_api: SearchApiCatalogueSettings | None = None

    @model_validator(mode="after")
    def _backend_section(self) -> CatalogueSettings:
        section, needs = _CATALOGUE_SECTIONS[self.backend]
        if getattr(self, section) is None:
            raise ValueError(
                f"backend {self.backend!r} needs a '{section}:' section (at least {needs})"
            )
        return self

    @property
    def backend_section(self) -> BaseModel | None:
        """The settings of the chosen backend (``search-api`` reads ``search_api:``)."""
        return getattr(self, _CATALOGUE_SECTIONS[self.backend][0])


class DockerSettings(Section):
    """The single-host Docker backend."""

    hub_connect_ip: str = Field(
        "172.17.0.1", description="The host's address on the Docker bridge, for containers."
    )
    hub_api_port: int = Field(8081, ge=1, le=65535, description="Port of the hub's API.")
    network: str = Field(
        "panosc-users",
        description="Docker network the servers join; the portal creates it with traffic"
        " between containers off, and refuses one that allows it.",
    )
    home_volume: str = Field("panosc-home-{username}", description="Named volume per user.")
    pull_policy: Literal["never", "ifnotpresent", "always"] = "never"


class HostPathSource(Section):
    path: str = Field(pattern=r"^/", description="The folder on every node.")
    type: Literal["Directory", "DirectoryOrCreate"] | None = Field(
        None, description="Directory: refuse to start on a node that lacks it."
    )


class NfsSource(Section):
    server: str = Field(min_length=1)
    path: str = Field(pattern=r"^/", description="The exported folder.")
    readOnly: bool = False


class PvcSource(Section):
    claimName: str = Field(min_length=1)
    readOnly: bool = False


class KubeVolume(Section):
    """A Kubernetes volume source as in a pod spec: hostPath, nfs or persistentVolumeClaim.

    Its keys are Kubernetes' own (camelCase), so a pod spec's volume can be pasted here.
    """

    hostPath: HostPathSource | None = None
    nfs: NfsSource | None = None
    persistentVolumeClaim: PvcSource | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> KubeVolume:
        kinds = [k for k in ("hostPath", "nfs", "persistentVolumeClaim") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError(
                "a storage volume is exactly one of hostPath, nfs, persistentVolumeClaim"
                + (f"; got {', '.join(kinds)}" if kinds else "")
            )
        return self


class KubeHomeSettings(Section):
    """Each user's home: one PersistentVolumeClaim, shared by their servers."""

    capacity: str = Field("10Gi", pattern=r"^[1-9][0-9]*(Mi|Gi|Ti)$")
    storage_class: str | None = Field(None, description="Default: the cluster's default class.")
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany"]] = Field(
        default_factory=lambda: ["ReadWriteOnce"], min_length=1
    )


class KubeSettings(Section):
    """The Kubernetes backend: one pod per server. The Helm chart writes this section."""

    hub_api_port: int = Field(8081, ge=1, le=65535, description="The hub's API port in its pod.")
    hub_connect_url: AnyHttpUrl = Field(
        "http://hub:8081", description="The hub's Service, as user pods reach it."
    )
    proxy_api_url: AnyHttpUrl = Field(
        "http://proxy-api:8001", description="configurable-http-proxy's API Service."
    )
    storage_volumes: dict[str, KubeVolume] = Field(
        default_factory=dict,
        description="Folder in the hub pod (a storage root, the processed root) -> its volume.",
    )
    home: KubeHomeSettings = Field(default_factory=KubeHomeSettings)
    image_registry: str = Field("", description="Prefixed to every environment's image.")
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list)
    start_timeout: int = Field(300, ge=10, description="Seconds a pod may take to start.")
    guarantee_fraction: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Share of a server's CPU and memory limits its pod requests (reserves).",
    )
    pod_labels: dict[str, str] = Field(default_factory=dict)
    profile_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Environment -> extra kubespawner settings."
    )

    @field_validator("storage_volumes")
    @classmethod
    def _absolute_folders(cls, volumes: dict[str, KubeVolume]) -> dict[str, KubeVolume]:
        for folder in volumes:
            if not folder.startswith("/"):
                raise ValueError(f"storage volume folder {folder!r} must be an absolute path")
        return volumes


class SlurmPartition(Section):
    """A partition users may pick, with the most a job there may ask for."""

    max_minutes: int = Field(ge=1, description="The longest time limit a user may ask for.")
    max_cpus: int | None = Field(None, ge=1, description="CPUs a job may ask for at most.")
    max_memory: str | None = Field(
        None, pattern=r"^[1-9][0-9]*[KMGT]$", description="Memory a job may ask for, like 16G."
    )
    label: str | None = Field(None, description="What the spawn form shows for it.")


class SlurmSettings(Section):
    """The Slurm backend: each server is a batch job on the cluster, in a sandbox."""

    hub_connect_ip: str = Field(
        description="The hub's address as the compute nodes reach it; its API listens there."
    )
    hub_api_port: int = Field(8081, ge=1, le=65535, description="Port of the hub's API.")
    partitions: dict[str, SlurmPartition] = Field(
        min_length=1, description="Partitions users may pick; the first is the default."
    )
    default_partition: str | None = Field(
        None, description="The partition offered first; default: the first one listed."
    )
    default_walltime: int = Field(120, ge=1, description="Minutes a job asks for by default.")
    account: str = Field("", pattern=r"^[A-Za-z0-9_.-]*$", description="Slurm account to charge.")
    extra_sbatch: list[str] = Field(
        default_factory=list, description="Site lines added to every job, each '#SBATCH ...'."
    )
    slurm_conf: Path | None = Field(None, description="slurm.conf, if not the default one.")
    environments_dir: Path = Field(
        Path("/srv/panosc/environments"),
        description="Shared folder of the unpacked environments (panosc-portal images export).",
    )
    node_python: str = Field("/usr/bin/python3", pattern=r"^/", description="Nodes' python3.")
    home_dir: str = Field(
        "/home/panosc/{username}",
        pattern=r"^/",
        description="Each user's home on the shared filesystem; {username} is the user.",
    )

    @model_validator(mode="after")
    def _known_default(self) -> SlurmSettings:
        if self.default_partition and self.default_partition not in self.partitions:
            raise ValueError(
                f"default_partition {self.default_partition!r} is not one of the partitions"
                f" ({', '.join(self.partitions)})"
            )
        return self

    @field_validator("extra_sbatch")
    @classmethod
    def _sbatch_lines(cls, lines: list[str]) -> list[str]:
        for line in lines:
            if not line.startswith("#SBATCH --") or any(c in line for c in "\n\r'"):
                raise ValueError(
                    f"extra_sbatch line {line!r} must be one '#SBATCH --option' line"
                    " (no line break, no quote)"
                )
        return lines


class SpawnerSettings(Section):
    backend: Literal["local", "docker", "kube", "slurm"] = "local"
    storage_roots: dict[str, Path] = Field(default_factory=dict)
    processed_root: Path | None = None
    default_datasets: Literal["all", "none"] = "all"
    audit_interval: float = Field(
        300,
        ge=0,
        description="Seconds between checks that running servers' users may still read their"
        " datasets; a server whose access was revoked is stopped. 0: never.",
    )
    home_dir: str | None = None
    named_server_limit: int = Field(
        10, ge=1, description="Named servers a user may keep, running or stopped."
    )
    docker: DockerSettings = Field(default_factory=DockerSettings)
    kube: KubeSettings = Field(default_factory=KubeSettings)
    slurm: SlurmSettings | None = None

    @field_validator("storage_roots")
    @classmethod
    def _absolute_prefixes(cls, roots: dict[str, Path]) -> dict[str, Path]:
        for prefix in roots:
            if not prefix.startswith("/"):
                raise ValueError(f"storage root prefix {prefix!r} must be an absolute path")
        return roots

    @model_validator(mode="after")
    def _slurm_section(self) -> SpawnerSettings:
        if self.backend == "slurm" and self.slurm is None:
            raise ValueError(
                "backend 'slurm' needs a 'slurm:' section (at least hub_connect_ip and"
                " partitions), see README 'Deploy on a Slurm cluster'"
            )
        return self

    @model_validator(mode="after")
    def _kube_volumes(self) -> SpawnerSettings:
        """On Kubernetes, user pods reach storage only through volumes: one must hold each root."""
        if self.backend != "kube":
            return self
        if not self.storage_roots:
            raise ValueError(
                "backend 'kube' needs storage_roots (catalogue prefix -> folder in the hub pod),"
                " each folder held by a volume in kube.storage_volumes"
            )
        folders = [PurePosixPath(f) for f in self.kube.storage_volumes]
        needed = [*self.storage_roots.values(), *filter(None, [self.processed_root])]
        for path in map(PurePosixPath, needed):
            if not any(path == f or f in path.parents for f in folders):
                raise ValueError(
                    f"kube.storage_volumes holds no volume for {path}; add e.g."
                    f" '{path}': {{hostPath: {{path: {path}}}}} (or nfs, persistentVolumeClaim)"
                )
        return self


class CullSettings(Section):
    """jupyterhub-idle-culler, run by the hub as a service with least-privilege scopes."""

    enabled: bool = True
    timeout: int = Field(3600, ge=1, description="Stop a server idle this many seconds.")
    every: int = Field(300, ge=1, description="Check this often (seconds).")
    max_age: int = Field(0, ge=0, description="Stop any server this old (s); 0: no limit.")


class CourseSettings(Section):
    """Notebook courses: /hub/course/<name> starts one for a student in one click."""

    sources: dict[str, CourseSource] = Field(
        default_factory=dict, description="Course name -> its folder, or {git: URL, ...}."
    )
    trainer_groups: list[str] = Field(
        default_factory=list, description="Groups whose members see who started each course."
    )
    update_interval: float = Field(
        60.0, ge=0, description="Seconds before opening a git course fetches it again."
    )

    @field_validator("sources")
    @classmethod
    def _course_names(cls, sources: dict[str, CourseSource]) -> dict[str, CourseSource]:
        check_names(sources)
        return sources


class SharingSettings(Section):
    """Sharing a running session from the home page, and support staff asking to join one."""

    support_groups: list[str] = Field(
        default_factory=list,
        description="Groups whose members (local contacts, instrument scientists) may ask to"
        " join a user's running session; the owner accepts or declines on their home page.",
    )
    auth_cache: int = Field(
        30,
        ge=1,
        le=300,
        description="Seconds a server reuses the hub's answer on who may enter it: the most a"
        " revoked or audited-away share keeps working in an already open tab.",
    )


#: Image files JupyterHub's logo handler serves with the right type, as a browser shows them.
LOGO_SUFFIXES = (".svg", ".png", ".jpg", ".jpeg", ".gif", ".webp")
#: The portal's own logo, used when ``branding.logo`` is empty.
DEFAULT_LOGO = Path(__file__).with_name("static") / "portal-logo.svg"


def _link_url(url: str) -> str:
    """An ``http(s)://`` URL or a path on the portal: anything else (``javascript:``,
    ``data:``, ``//host``) could run script or leave the site unannounced from a trusted page."""
    if "\\" in url or any(c.isspace() or not c.isprintable() for c in url):
        # browsers read "/\host" as "//host", and drop tabs and newlines inside a scheme
        raise ValueError(
            f"link url {url!r} must not contain backslashes, spaces or control characters;"
            " write it as https://... (spaces as %20) or a path on the portal"
        )
    if url.startswith("/") and not url.startswith("//"):
        return url
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest or rest[0] in "/?#":
        raise ValueError(
            f"link url {url!r} must start with https:// or http:// (or be a path on the portal,"
            " such as /hub/datasets)"
        )
    return url


class BrandingLink(Section):
    """A link on the landing page and in every page's footer (help, data policy, catalogue)."""

    title: str = Field(min_length=1, max_length=60, description="The link's text.")
    url: str = Field(description="https://... or a path on the portal such as /hub/datasets.")

    @field_validator("url")
    @classmethod
    def _safe_url(cls, url: str) -> str:
        return _link_url(url)


class BrandingSettings(Section):
    """What the landing page and every page's navbar say: whose portal this is and for what."""

    name: str = Field("PaNOSC Portal", min_length=1, max_length=60)
    facility: str = Field("", max_length=80, description="The facility running the portal.")
    logo: str = Field(
        "",
        description="An image file on the hub host (served by the hub at /hub/logo) or an"
        " https:// URL; empty: the portal's own logo.",
    )
    tagline: str = Field(
        "JupyterLab and remote desktops on your experiment data, in the environment made for"
        " your technique.",
        min_length=1,
        max_length=300,
    )
    links: list[BrandingLink] = Field(default_factory=list, max_length=10)

    @field_validator("logo")
    @classmethod
    def _logo(cls, logo: str) -> str:
        lowered = logo.lower()
        if lowered.startswith("https://"):
            return _link_url(logo)
        if ":" in logo.split("/")[0]:  # a scheme: http:, data:, javascript:, ...
            why = " (http:// would be mixed content on an https portal)"
            raise ValueError(
                f"logo {logo!r}: give an https:// URL or an image file on the hub host"
                + (why if lowered.startswith("http:") else "")
            )
        if logo and not lowered.endswith(LOGO_SUFFIXES):
            raise ValueError(
                f"logo {logo!r}: the file must be an image ({', '.join(LOGO_SUFFIXES)})"
            )
        return logo

    @property
    def logo_url(self) -> str | None:
        """The logo's URL when it is remote; ``None`` when the hub serves a file."""
        return self.logo if self.logo.lower().startswith("https://") else None

    @property
    def logo_file(self) -> Path | None:
        """The logo file the hub serves at ``/hub/logo``; ``None`` for a remote logo."""
        if self.logo_url:
            return None
        return Path(self.logo) if self.logo else DEFAULT_LOGO


class PortalSettings(Section):
    hub: HubSettings = Field(default_factory=HubSettings)
    cull: CullSettings = Field(default_factory=CullSettings)
    auth: AuthSettings
    catalogue: CatalogueSettings
    spawner: SpawnerSettings = Field(default_factory=SpawnerSettings)
    courses: CourseSettings = Field(default_factory=CourseSettings)
    sharing: SharingSettings = Field(default_factory=SharingSettings)
    branding: BrandingSettings = Field(default_factory=BrandingSettings)
    extra_config: dict[str, dict[str, Any]] = Field(default_factory=dict)
    source: Path | None = Field(None, exclude=True)

    @field_validator("extra_config")
    @classmethod
    def _class_names(cls, extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in extra:
            if not name[:1].isupper() or not name.isidentifier():
                raise ValueError(
                    f"{name!r} is not a configurable class name; use e.g. JupyterHub or Spawner"
                )
        return extra


def parse(text: str, source: str = "portal.yaml", base_dir: Path | None = None) -> PortalSettings:
    """Validate the text of a ``portal.yaml``; relative paths are taken from ``base_dir``."""
    try:
        settings = Document(text, source).validate(PortalSettings)
    except YamlFileError as e:
        raise SettingsError(e.problems) from None
    return _absolute(settings, base_dir or Path.cwd(), Path(source))


def _absolute(settings: PortalSettings, base: Path, source: Path) -> PortalSettings:
    """Resolve every relative path in the settings against ``base`` (the file's folder)."""

    def fix(path: Path | None) -> Path | None:
        return None if path is None else (base / path).resolve()

    catalogue = settings.catalogue
    if catalogue.local is not None:
        local = catalogue.local.model_copy(
            update={
                "data_root": fix(catalogue.local.data_root),
                "index_path": fix(catalogue.local.index_path),
            }
        )
        catalogue = catalogue.model_copy(update={"local": local})
    spawner = settings.spawner.model_copy(
        update={
            "storage_roots": {k: fix(v) for k, v in settings.spawner.storage_roots.items()},
            "processed_root": fix(settings.spawner.processed_root),
        }
    )
    hub = settings.hub.model_copy(update={"state_dir": fix(settings.hub.state_dir)})
    sources = {
        name: course.model_copy(update={"folder": fix(course.folder)})
        for name, course in settings.courses.sources.items()
    }
    courses = settings.courses.model_copy(update={"sources": sources})
    branding = _branding_file(settings.branding, base, source)
    return settings.model_copy(
        update={
            "hub": hub,
            "catalogue": catalogue,
            "spawner": spawner,
            "courses": courses,
            "branding": branding,
            "source": source,
        }
    )


def _branding_file(branding: BrandingSettings, base: Path, source: Path) -> BrandingSettings:
    """The logo file taken from ``base``; a missing one is refused now, not shown broken."""
    if not branding.logo or branding.logo_url:
        return branding
    logo = (base / branding.logo).resolve()
    if not logo.is_file():
        raise SettingsError(
            [
                f"{source}: branding.logo: {logo} is not a file on the hub host; give an image"
                " file the hub can read, or an https:// URL"
            ]
        )
    return branding.model_copy(update={"logo": str(logo)})


def load(path: str | Path) -> PortalSettings:
    """Read and validate a ``portal.yaml`` file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError([f"{path}: cannot read the file: {e}"]) from None
    return parse(text, str(path), path.resolve().parent)
