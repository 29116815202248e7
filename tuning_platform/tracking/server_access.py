"""A tracking server with users (MLflow's `basic-auth` app): the credentials MLflow's client
sends, and the permissions a job needs, checked before anything starts.

The credentials are MLflow's own: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or
~/.mlflow/credentials), or MLFLOW_TRACKING_TOKEN, read by `get_default_host_creds` as every
MLflow client reads them. A job writes runs in its experiment, so it needs EDIT there; it
registers a model version, which needs EDIT on the registered model. The server's `/health`
answers anyone, so the pre-flight asks for the job's experiment instead, and, with a user name,
the server's own answer to "what may this user do here" (`/api/3.0/mlflow/users/permissions/get`,
the auth app's API since MLflow 3.10; a server without it is simply not asked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CREDENTIAL_VARIABLES = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
EXPERIMENT_PATH = "/api/2.0/mlflow/experiments/get-by-name"
MODEL_PATH = "/api/2.0/mlflow/registered-models/get"
CURRENT_USER_PATH = "/api/2.0/mlflow/users/current"
PERMISSION_PATH = "/api/3.0/mlflow/users/permissions/get"
# What writing needs: runs in an experiment, versions of a registered model (the auth app's
# `update` right; READ and USE do not have it).
WRITE_PERMISSIONS = ("EDIT", "MANAGE")
CHECK_TIMEOUT_S = 10


class AccessError(Exception):
    """The server refused the job's credentials or the permission it needs: one line."""


@dataclass
class Access:
    """What the pre-flight learned: the user, and a permission the job lacks on the registered
    model (None when it has it, or the server was not asked)."""

    username: str | None
    model_permission_missing: str | None = None


def check_server_access(uri: str, experiment: str | None, model: str | None = None) -> Access:
    """Raises AccessError when the server refuses the credentials, or the user may not write
    runs in `experiment` (None: a command that only reads, which needs only to be let in). A
    missing permission on an existing `model` is returned, not raised: the job's trials are worth
    running and recording without it."""
    from mlflow.utils.credentials import get_default_host_creds

    creds = get_default_host_creds(uri)
    access = Access(creds.username)
    response = _get(creds, EXPERIMENT_PATH, {"experiment_name": experiment or "Default"})
    if response.status_code == 401:
        raise AccessError(_unauthenticated(creds))
    if experiment is None:
        return access
    if response.status_code == 403:
        raise AccessError(f"{_who(creds)} may not read experiment {experiment!r}; {_ask('EDIT')}")
    if response.status_code != 200 or not creds.username or _is_admin(creds):
        return access  # a new experiment (its creator may write it), no users, a token, an admin
    experiment_id = response.json()["experiment"]["experiment_id"]
    permission = _permission(creds, "experiment", experiment_id)
    if permission is not None and permission not in WRITE_PERMISSIONS:
        raise AccessError(
            f"{_who(creds)} has {permission} on experiment {experiment!r}; a job writes runs there and needs "
            f"EDIT: {_ask('EDIT')}"
        )
    if model is not None and _get(creds, MODEL_PATH, {"name": model}).status_code == 200:  # a new one is theirs
        permission = _permission(creds, "registered_model", model)
        if permission is not None and permission not in WRITE_PERMISSIONS:
            access.model_permission_missing = permission
    return access


def refused_registration(model: str, reason: str) -> str:
    """The warning for a registration the server refused; the job's records stand."""
    from mlflow.utils.credentials import read_mlflow_creds

    username = read_mlflow_creds().username
    who = f"user {username!r}" if username else "this user"
    return (
        f"warning: registry: {who} may not register versions of {model!r} ({reason}): the trials and the parent "
        f"run are recorded and the model is logged with the parent run (its Logged models), but not registered; "
        f"{_ask('EDIT', 'on the registered model')}"
    )


def _get(creds: Any, path: str, params: dict[str, str]) -> Any:
    from mlflow.utils.rest_utils import http_request

    try:
        return http_request(creds, path, "GET", params=params, max_retries=0, timeout=CHECK_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - any failure to ask is the server not reachable
        raise AccessError(f"MLflow tracking server did not answer: {type(err).__name__}: {err}") from None


def _permission(creds: Any, resource_type: str, resource_id: str) -> str | None:
    """The user's permission on the resource, as the server names it; None when it has no such
    API (an older MLflow, a proxy that does not pass it)."""
    params = {"username": creds.username, "resource_type": resource_type, "resource_id": resource_id}
    response = _get(creds, PERMISSION_PATH, params)
    if response.status_code != 200:
        return None
    try:
        found = response.json()
    except ValueError:
        return None
    return str(found["permission"]) if isinstance(found, dict) and "permission" in found else None


def _is_admin(creds: Any) -> bool:
    """An admin may do anything (the auth app lets admins past every check), whatever the
    permission API says of them."""
    response = _get(creds, CURRENT_USER_PATH, {})
    try:
        return response.status_code == 200 and bool(response.json().get("user", {}).get("is_admin"))
    except (ValueError, AttributeError):
        return False


def _who(creds: Any) -> str:
    return f"user {creds.username!r}" if creds.username else "this user"


def _unauthenticated(creds: Any) -> str:
    if creds.token:
        return "the MLflow tracking server refused MLFLOW_TRACKING_TOKEN: set a valid token, or " + CREDENTIAL_VARIABLES
    if creds.username:
        return (
            f"the MLflow tracking server refused user {creds.username!r} and its password: check {CREDENTIAL_VARIABLES}"
        )
    return f"the MLflow tracking server requires a user: set {CREDENTIAL_VARIABLES}"


def _ask(permission: str, where: str = "") -> str:
    where = f" {where}" if where else ""
    return f"ask an MLflow admin to grant {permission}{where} (docs/security.md, 'Users and permissions')"
