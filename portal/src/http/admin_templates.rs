//! Template administration for platform admins, on either backend.
//!
//! Pages: `GET /admin/templates` (the catalog with a delete button per template, and the form to
//! create one), `POST /admin/templates` (create), `GET /admin/templates/{template}` (the edit
//! form), `POST /admin/templates/{template}` (save) and `POST /admin/templates/{template}/delete`.
//! The form sets the display name, description, image, protocol, port, CPU and memory requests and
//! limits, home and shared-memory sizes and the idle timeout; the rest of the spec (environment,
//! GPUs, home path, pull policy) is kept as it is. A refused form comes back as it was sent with
//! the backend's message, and nothing is changed; a template that workspaces use is not deleted.
//! The JSON API (`/api/v1/admin/templates`) shares [`put_template`] and [`delete_template`].

use std::net::IpAddr;

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use deskpod_controller::api::{DesktopProtocol, WorkspaceTemplateSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Deserialize;

use super::admin::{audit_change, require_admin};
use super::workspaces::{backend_error, csrf_of};
use super::{Nav, Page, PageError};
use crate::audit::AuditAction;
use crate::auth::{CurrentUser, RemoteAddr, SessionForm};
use crate::backend::kubernetes::validate_workspace_name;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::template_rules;

/// What the pages say a non-admin may not see.
pub(crate) const WHAT: &str = "Template settings";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/templates", get(list_page).post(create_from_form))
        .route("/admin/templates/{template}", get(edit_page).post(save_from_form))
        .route("/admin/templates/{template}/delete", post(delete_from_form))
}

// ---------------------------------------------------------------------------------------------
// Operations shared with the JSON API
// ---------------------------------------------------------------------------------------------

fn check_name(template: &str) -> Result<()> {
    validate_workspace_name(template).map_err(|e| Error::invalid("name", e.replace("workspace", "template")))
}

/// Creates or replaces `template` (admins only), audited as `template.put`. A spec that breaks
/// [`template_rules`] is a 400 naming the field, and nothing is written.
pub(crate) async fn put_template(
    state: &AppState,
    user: &CurrentUser,
    template: &str,
    spec: WorkspaceTemplateSpec,
    remote: Option<IpAddr>,
) -> Result<()> {
    let result = async {
        require_admin(user, WHAT)?;
        check_name(template)?;
        template_rules::check(&spec).map_err(|refusal| Error::invalid(refusal.field, refusal.message))?;
        state.backend.put_template(template, spec).await.map_err(|e| backend_error(e, None))
    }
    .await;
    audit_change(state, user, AuditAction::TemplatePut, template, remote, &result).await;
    result
}

/// Deletes `template` (admins only) unless workspaces use it, audited as `template.delete`.
pub(crate) async fn delete_template(
    state: &AppState,
    user: &CurrentUser,
    template: &str,
    remote: Option<IpAddr>,
) -> Result<()> {
    let result = async {
        require_admin(user, WHAT)?;
        state.backend.delete_template(template).await.map_err(|e| backend_error(e, None))
    }
    .await;
    audit_change(state, user, AuditAction::TemplateDelete, template, remote, &result).await;
    result
}

/// The stored spec of `template`, 404 when there is none.
pub(crate) async fn template_spec(state: &AppState, template: &str) -> Result<WorkspaceTemplateSpec> {
    state
        .backend
        .template_spec(template)
        .await
        .map_err(|e| backend_error(e, None))?
        .ok_or_else(|| Error::NotFound(format!("there is no template {template}")))
}

// ---------------------------------------------------------------------------------------------
// The form
// ---------------------------------------------------------------------------------------------

/// The template form's fields as typed, so a refused form comes back as it was sent.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(super) struct TemplateForm {
    pub(super) name: String,
    pub(super) display_name: String,
    pub(super) description: String,
    pub(super) image: String,
    /// `novnc` or `kasm`.
    pub(super) protocol: String,
    pub(super) port: String,
    pub(super) cpu_request: String,
    pub(super) cpu_limit: String,
    pub(super) memory_request: String,
    pub(super) memory_limit: String,
    pub(super) home_size: String,
    pub(super) shm_size: String,
    pub(super) idle_timeout: String,
}

/// The port a new template's desktop serves on unless the form says otherwise.
const DEFAULT_PORT: i32 = deskpod_images::catalogue::desktop::VNC_PORT as i32;

impl TemplateForm {
    fn trimmed(mut self) -> Self {
        for field in [
            &mut self.name,
            &mut self.display_name,
            &mut self.description,
            &mut self.image,
            &mut self.protocol,
            &mut self.port,
            &mut self.cpu_request,
            &mut self.cpu_limit,
            &mut self.memory_request,
            &mut self.memory_limit,
            &mut self.home_size,
            &mut self.shm_size,
            &mut self.idle_timeout,
        ] {
            *field = field.trim().to_owned();
        }
        self
    }

    fn new_template() -> Self {
        Self { protocol: "novnc".into(), port: DEFAULT_PORT.to_string(), ..Self::default() }
    }

    fn from_spec(name: &str, spec: &WorkspaceTemplateSpec) -> Self {
        let quantity = |q: &Option<Quantity>| q.as_ref().map(|q| q.0.clone()).unwrap_or_default();
        Self {
            name: name.to_owned(),
            display_name: spec.display_name.clone(),
            description: spec.description.clone().unwrap_or_default(),
            image: spec.image.clone(),
            protocol: match spec.protocol {
                DesktopProtocol::Novnc => "novnc".into(),
                DesktopProtocol::Kasm => "kasm".into(),
            },
            port: spec.port.to_string(),
            cpu_request: quantity(&spec.resources.cpu_request),
            cpu_limit: quantity(&spec.resources.cpu_limit),
            memory_request: quantity(&spec.resources.memory_request),
            memory_limit: quantity(&spec.resources.memory_limit),
            home_size: quantity(&spec.home_size),
            shm_size: quantity(&spec.shm_size),
            idle_timeout: spec.idle_timeout.clone().unwrap_or_default(),
        }
    }

    /// `base` (the stored spec, or `None` for a new template) with the form's fields. Only what
    /// the form cannot express is refused here (a port that is not a number, an unknown
    /// protocol); whether the values are acceptable is [`put_template`]'s call.
    fn apply_to(&self, base: Option<WorkspaceTemplateSpec>) -> Result<WorkspaceTemplateSpec> {
        let quantity = |q: &str| (!q.is_empty()).then(|| Quantity(q.to_owned()));
        let protocol = match self.protocol.as_str() {
            "novnc" | "" => DesktopProtocol::Novnc,
            "kasm" => DesktopProtocol::Kasm,
            other => {
                return Err(Error::invalid("protocol", format!("{other:?} is not a protocol; choose novnc or kasm")));
            }
        };
        let port = match self.port.as_str() {
            "" => DEFAULT_PORT,
            raw => raw
                .parse()
                .map_err(|_| Error::invalid("port", format!("the port must be a number such as 6901, not {raw:?}")))?,
        };
        let mut spec =
            base.unwrap_or_else(|| WorkspaceTemplateSpec { protocol, port, ..WorkspaceTemplateSpec::new("", "") });
        spec.display_name = self.display_name.clone();
        spec.description = (!self.description.is_empty()).then(|| self.description.clone());
        spec.image = self.image.clone();
        spec.protocol = protocol;
        spec.port = port;
        spec.resources.cpu_request = quantity(&self.cpu_request);
        spec.resources.cpu_limit = quantity(&self.cpu_limit);
        spec.resources.memory_request = quantity(&self.memory_request);
        spec.resources.memory_limit = quantity(&self.memory_limit);
        spec.home_size = quantity(&self.home_size);
        spec.shm_size = quantity(&self.shm_size);
        spec.idle_timeout = (!self.idle_timeout.is_empty()).then(|| self.idle_timeout.clone());
        Ok(spec)
    }
}

// ---------------------------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------------------------

/// A template as a row of the list.
struct TemplateLine {
    name: String,
    display_name: String,
    protocol: &'static str,
    resources: String,
}

#[derive(Template)]
#[template(path = "admin_templates.html")]
struct TemplatesPage {
    nav: Option<Nav>,
    csrf: String,
    templates: Vec<TemplateLine>,
    /// The create form.
    form: TemplateForm,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "admin_template.html")]
struct TemplatePage {
    nav: Option<Nav>,
    csrf: String,
    form: TemplateForm,
    error: Option<String>,
}

/// Whether a refusal is the admin's to fix in the form (shown with the form) rather than a
/// failure or a refusal of permission (an error page).
fn is_form_error(error: &Error) -> bool {
    error.status().is_client_error() && !matches!(error, Error::Forbidden(_) | Error::Unauthenticated(_))
}

async fn templates_page(
    state: &AppState,
    user: &CurrentUser,
    form: TemplateForm,
    error: Option<Error>,
) -> Result<Response> {
    let templates = state.backend.templates().await.map_err(|e| backend_error(e, None))?;
    let status = error.as_ref().map_or(StatusCode::OK, Error::status);
    let page = TemplatesPage {
        nav: Nav::of(user),
        csrf: csrf_of(user),
        templates: templates
            .into_iter()
            .map(|t| TemplateLine {
                resources: t.resources.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
                protocol: match t.protocol {
                    crate::backend::Protocol::Novnc => "novnc",
                    crate::backend::Protocol::Kasm => "kasm",
                },
                name: t.name,
                display_name: t.display_name,
            })
            .collect(),
        form,
        error: error.map(|e| e.public_message()),
    };
    Ok((status, Page(page)).into_response())
}

fn template_page(user: &CurrentUser, form: TemplateForm, error: Option<Error>) -> Response {
    let status = error.as_ref().map_or(StatusCode::OK, Error::status);
    let page = TemplatePage { nav: Nav::of(user), csrf: csrf_of(user), form, error: error.map(|e| e.public_message()) };
    (status, Page(page)).into_response()
}

async fn list_page(State(state): State<AppState>, user: CurrentUser) -> Result<Response, PageError> {
    require_admin(&user, WHAT)?;
    Ok(templates_page(&state, &user, TemplateForm::new_template(), None).await?)
}

async fn create_from_form(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    SessionForm { user, form }: SessionForm<TemplateForm>,
) -> Result<Response, PageError> {
    require_admin(&user, WHAT)?;
    let form = form.trimmed();
    let result = async {
        check_name(&form.name)?;
        if state.backend.template_spec(&form.name).await.map_err(|e| backend_error(e, None))?.is_some() {
            return Err(Error::Conflict {
                field: Some("name"),
                message: format!("template {} exists already; edit it from the list", form.name),
            });
        }
        let spec = form.apply_to(None)?;
        put_template(&state, &user, &form.name, spec, remote).await
    }
    .await;
    match result {
        Ok(()) => Ok(Redirect::to("/admin/templates").into_response()),
        Err(error) if is_form_error(&error) => Ok(templates_page(&state, &user, form, Some(error)).await?),
        Err(error) => Err(error.into()),
    }
}

async fn edit_page(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(template): Path<String>,
) -> Result<Response, PageError> {
    require_admin(&user, WHAT)?;
    let spec = template_spec(&state, &template).await?;
    Ok(template_page(&user, TemplateForm::from_spec(&template, &spec), None))
}

async fn save_from_form(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    Path(template): Path<String>,
    SessionForm { user, form }: SessionForm<TemplateForm>,
) -> Result<Response, PageError> {
    require_admin(&user, WHAT)?;
    let mut form = form.trimmed();
    form.name = template.clone();
    let result = async {
        // The stored spec keeps what the form does not show (environment, GPUs, home path).
        let spec = form.apply_to(Some(template_spec(&state, &template).await?))?;
        put_template(&state, &user, &template, spec, remote).await
    }
    .await;
    match result {
        Ok(()) => Ok(Redirect::to("/admin/templates").into_response()),
        Err(error) if is_form_error(&error) && !matches!(error, Error::NotFound(_)) => {
            Ok(template_page(&user, form, Some(error)))
        }
        Err(error) => Err(error.into()),
    }
}

async fn delete_from_form(
    State(state): State<AppState>,
    RemoteAddr(remote): RemoteAddr,
    Path(template): Path<String>,
    SessionForm { user, form: _ }: SessionForm<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    require_admin(&user, WHAT)?;
    match delete_template(&state, &user, &template, remote).await {
        Ok(()) => Ok(Redirect::to("/admin/templates").into_response()),
        Err(error @ Error::Conflict { .. }) => {
            Ok(templates_page(&state, &user, TemplateForm::new_template(), Some(error)).await?)
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_template_gets_the_forms_fields_and_empty_ones_stay_unset() {
        let form = TemplateForm {
            name: "py".into(),
            display_name: "Python".into(),
            image: "deskpod/python:latest".into(),
            protocol: "kasm".into(),
            port: "6902".into(),
            cpu_limit: "2".into(),
            idle_timeout: "2h".into(),
            ..TemplateForm::default()
        };
        let spec = form.apply_to(None).unwrap();
        assert_eq!((spec.protocol, spec.port), (DesktopProtocol::Kasm, 6902));
        assert_eq!(spec.resources.cpu_limit, Some(Quantity("2".into())));
        assert_eq!((&spec.resources.cpu_request, &spec.home_size), (&None, &None));
        assert_eq!(spec.idle_timeout.as_deref(), Some("2h"));
        assert_eq!(TemplateForm::from_spec("py", &spec).apply_to(Some(spec.clone())).unwrap(), spec);
    }

    #[test]
    fn what_the_form_cannot_express_is_refused_with_the_field() {
        let form = TemplateForm { port: "web".into(), ..TemplateForm::default() };
        assert_eq!(form.apply_to(None).unwrap_err().field(), Some("port"));
        let form = TemplateForm { protocol: "rdp".into(), ..TemplateForm::default() };
        assert_eq!(form.apply_to(None).unwrap_err().field(), Some("protocol"));
    }
}
