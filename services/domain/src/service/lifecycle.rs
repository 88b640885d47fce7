//! Service lifecycle: create, update, suspend/resume, delete, scale,
//! restart (SPEC §4, §10, §11): the decisions, and the `apply` of the
//! settings and lifecycle events they produce.

use berth_schemas::events::{
    CronJobRunEnded, DeployCreated, DiskAdded, DiskRemoved, DiskUpdated, InstanceCountChanged,
    LogStreamOverrideChanged, MaintenanceModeEnabled, MaintenanceModeUriUpdated, RestartRequested,
    ServiceCreated, ServiceCreationAbandoned, ServiceDeleted, ServiceResumed, ServiceSettings,
    ServiceSuspended, ServiceUpdated,
};
use berth_schemas::ids::DeployId;
use berth_schemas::model::{DeployTrigger, MaintenanceMode, ServiceType};
use berth_schemas::Event;
use chrono::{DateTime, Utc};

use super::deploys::{self, config};
use super::state::{ServiceConfig, ServiceState, ServiceStatus};
use super::validate;
use super::CreateService;
use crate::aggregate::Ctx;
use crate::error::DomainError;

type Decision = Result<Vec<Event>, DomainError>;

pub(super) fn create(state: &ServiceState, c: CreateService, ctx: &Ctx) -> Decision {
    if state.status == ServiceStatus::Deleted && state.config.is_none() {
        return Err(DomainError::conflict(
            "the creation of this service took too long and was given up; create it again",
        ));
    }
    if state.status != ServiceStatus::NotCreated {
        return Err(DomainError::conflict("service already exists"));
    }
    validate::name(&c.name)?;
    let image = validate::image(&c.image)?.to_string();
    validate::region(&c.region)?;
    validate::plan(&c.plan)?;
    let mut num_instances = c.num_instances.unwrap_or(1);
    validate::num_instances(num_instances, ctx.max_instances)?;
    if let Some(a) = &c.autoscaling {
        super::autoscaling::check_for(c.service_type, c.disk.is_some(), a, ctx.max_instances)?;
        if a.enabled {
            // Autoscaled from the start: within its range.
            num_instances = num_instances.clamp(a.min, a.max);
        }
    }
    if c.service_type == ServiceType::CronJob && num_instances != 1 {
        return Err(DomainError::invalid(
            "numInstances",
            "a cron job runs one container per run; numInstances must be 1",
        ));
    }
    if let Some(disk) = &c.disk {
        validate::disk(disk, c.service_type, num_instances)?;
    }
    if let Some(cmd) = &c.docker_command {
        validate::command("dockerCommand", cmd)?;
    }
    if let Some(cmd) = &c.pre_deploy_command {
        validate::command("preDeployCommand", cmd)?;
    }
    if let Some(path) = &c.health_check_path {
        validate::health_check_path(path)?;
    }
    validate::type_fields(
        c.service_type,
        c.health_check_path.as_deref(),
        c.schedule.as_deref(),
        c.pre_deploy_command.as_deref(),
    )?;
    match (&c.schedule, c.service_type) {
        (Some(s), _) => validate::schedule(s)?,
        (None, ServiceType::CronJob) => {
            return Err(DomainError::invalid(
                "schedule",
                "a cron job needs a schedule",
            ))
        }
        (None, _) => {}
    }
    validate::env_vars(&c.env_vars)?;
    validate::secret_files(&c.secret_files)?;
    let shutdown_delay_secs = c
        .shutdown_delay_secs
        .unwrap_or(validate::SHUTDOWN_DELAY_DEFAULT);
    validate::shutdown_delay(shutdown_delay_secs)?;
    let overlap_policy = c.overlap_policy.unwrap_or_default();
    if c.https_redirect.is_some() {
        validate::https_redirect(c.service_type)?;
    }
    if let Some(m) = &c.maintenance_mode {
        validate::maintenance_mode(c.service_type, m)?;
    }
    let ip_allow_list = c
        .ip_allow_list
        .as_deref()
        .map(|l| validate::ip_allow_list(c.service_type, l))
        .transpose()?;

    let mut out: Vec<Event> = vec![ServiceCreated {
        owner: c.owner,
        name: c.name,
        service_type: c.service_type,
        image: image.clone(),
        credential: c.credential.clone(),
        region: c.region,
        plan: c.plan,
        num_instances,
        docker_command: c.docker_command,
        env_vars: c.env_vars,
        secret_files: c.secret_files,
        pre_deploy_command: c.pre_deploy_command,
        health_check_path: c.health_check_path,
        schedule: c.schedule,
        notify: c.notify,
        overlap_policy,
        shutdown_delay_secs,
        https_redirect: c.https_redirect.unwrap_or(true),
        hook_key: c.hook_key,
        disk: c.disk,
        maintenance_mode: c
            .maintenance_mode
            .filter(|m| *m != MaintenanceMode::default())
            .map(Box::new),
        ip_allow_list,
    }
    .into()];
    if let Some(a) = c.autoscaling {
        out.push(
            berth_schemas::events::AutoscalingConfigChanged {
                from: None,
                to: Some(a),
            }
            .into(),
        );
    }
    out.extend(deploys::admit(
        state,
        overlap_policy,
        DeployCreated {
            deploy: c.deploy,
            trigger: DeployTrigger::ServiceCreated,
            image,
            credential: c.credential,
            rollback_of: None,
        },
    ));
    Ok(out)
}

/// Keeps only the settings that change something, validated for the type.
fn effective_changes(
    state: &ServiceState,
    s: ServiceSettings,
) -> Result<ServiceSettings, DomainError> {
    let cfg = config(state)?;
    let ty = cfg.service_type;
    let mut diff = ServiceSettings::default();
    if let Some(name) = s.name {
        validate::name(&name)?;
        diff.name = (name != cfg.name).then_some(name);
    }
    if let Some(image) = s.image {
        let image = validate::image(&image)?.to_string();
        diff.image = (image != cfg.image).then_some(image);
    }
    if let Some(credential) = s.credential {
        diff.credential = (credential != cfg.credential).then_some(credential);
    }
    if let Some(plan) = s.plan {
        validate::plan(&plan)?;
        diff.plan = (plan != cfg.plan).then_some(plan);
    }
    if let Some(cmd) = s.docker_command {
        if let Some(c) = &cmd {
            validate::command("dockerCommand", c)?;
        }
        diff.docker_command = (cmd != cfg.docker_command).then_some(cmd);
    }
    if let Some(vars) = s.env_vars {
        validate::env_vars(&vars)?;
        diff.env_vars = (vars != cfg.env_vars).then_some(vars);
    }
    if let Some(files) = s.secret_files {
        validate::secret_files(&files)?;
        diff.secret_files = (files != cfg.secret_files).then_some(files);
    }
    if let Some(cmd) = s.pre_deploy_command {
        if let Some(c) = &cmd {
            validate::command("preDeployCommand", c)?;
            validate::type_fields(ty, None, None, Some(c))?;
        }
        diff.pre_deploy_command = (cmd != cfg.pre_deploy_command).then_some(cmd);
    }
    if let Some(path) = s.health_check_path {
        if let Some(p) = &path {
            validate::type_fields(ty, Some(p), None, None)?;
            validate::health_check_path(p)?;
        }
        diff.health_check_path = (path != cfg.health_check_path).then_some(path);
    }
    if let Some(schedule) = s.schedule {
        validate::type_fields(ty, None, Some(&schedule), None)?;
        validate::schedule(&schedule)?;
        diff.schedule = (Some(&schedule) != cfg.schedule.as_ref()).then_some(schedule);
    }
    if let Some(notify) = s.notify {
        diff.notify = (notify != cfg.notify).then_some(notify);
    }
    if let Some(policy) = s.overlap_policy {
        diff.overlap_policy = (policy != cfg.overlap_policy).then_some(policy);
    }
    if let Some(secs) = s.shutdown_delay_secs {
        validate::shutdown_delay(secs)?;
        diff.shutdown_delay_secs = (secs != cfg.shutdown_delay_secs).then_some(secs);
    }
    if let Some(on) = s.https_redirect {
        validate::https_redirect(ty)?;
        diff.https_redirect = (on != cfg.https_redirect).then_some(on);
    }
    match s.ip_allow_list {
        Some(Some(list)) => {
            let list = validate::ip_allow_list(ty, &list)?;
            diff.ip_allow_list = (cfg.ip_allow_list.as_ref() != Some(&list)).then_some(Some(list));
        }
        Some(None) => diff.ip_allow_list = cfg.ip_allow_list.is_some().then_some(None),
        None => {}
    }
    if let Some(m) = s.maintenance_mode {
        validate::maintenance_mode(ty, &m)?;
        let now = cfg.maintenance_mode.as_deref().cloned().unwrap_or_default();
        diff.maintenance_mode = (m != now).then_some(m);
    }
    Ok(diff)
}

/// Whether changed settings alter what the instances run (Render redeploys then).
pub fn needs_redeploy(changes: &ServiceSettings) -> bool {
    changes.image.is_some()
        || changes.credential.is_some()
        || changes.plan.is_some()
        || changes.docker_command.is_some()
        || changes.env_vars.is_some()
        || changes.secret_files.is_some()
}

/// Gives up a creation that never appended `service_created`.
pub(super) fn abandon_creation(state: &ServiceState) -> Vec<Event> {
    if state.status == ServiceStatus::NotCreated {
        vec![ServiceCreationAbandoned {}.into()]
    } else {
        vec![]
    }
}

pub(super) fn update(
    state: &ServiceState,
    settings: ServiceSettings,
    deploy: DeployId,
    _ctx: &Ctx,
) -> Decision {
    let mut diff = effective_changes(state, settings)?;
    // Maintenance mode has events of its own (Render's), never in
    // `service_updated`.
    let maintenance = diff.maintenance_mode.take();
    let mut out = match maintenance {
        Some(to) => maintenance_changes(config(state)?.maintenance_mode.as_deref().cloned(), to),
        None => vec![],
    };
    if diff == ServiceSettings::default() {
        return Ok(out);
    }
    out.push(
        ServiceUpdated {
            settings: diff.clone(),
        }
        .into(),
    );
    // A suspended service redeploys when resumed, with whatever it has then.
    if needs_redeploy(&diff) && state.status == ServiceStatus::Active {
        let mut cfg = config(state)?.clone();
        merge(&mut cfg, &diff);
        out.extend(deploys::deploy_of_config(
            state,
            &cfg,
            deploy,
            DeployTrigger::ServiceUpdated,
        )?);
    }
    Ok(out)
}

/// The events that take a web service's maintenance mode from `from` to
/// `to`: its page first, so a mode turned on with a page shows it at once.
fn maintenance_changes(from: Option<MaintenanceMode>, to: MaintenanceMode) -> Vec<Event> {
    let from = from.unwrap_or_default();
    let mut out: Vec<Event> = Vec::new();
    if from.uri != to.uri {
        out.push(
            MaintenanceModeUriUpdated {
                from_uri: from.uri,
                to_uri: to.uri,
            }
            .into(),
        );
    }
    if from.enabled != to.enabled {
        out.push(
            MaintenanceModeEnabled {
                enabled: to.enabled,
            }
            .into(),
        );
    }
    out
}

/// Cancels running and queued deploys, the active cron run and the
/// pending and running jobs.
fn stop_everything(state: &ServiceState) -> Vec<Event> {
    let mut out = deploys::stop_all(state);
    out.extend(super::jobs::cancel_all(state));
    if let Some(run) = &state.cron.active {
        out.push(
            CronJobRunEnded {
                run: run.id.clone(),
                status: "canceled".to_owned(),
                exit_code: None,
                reason: None,
            }
            .into(),
        );
    }
    out
}

pub(super) fn suspend(state: &ServiceState) -> Vec<Event> {
    if state.status == ServiceStatus::Suspended {
        return vec![];
    }
    let mut out = stop_everything(state);
    out.push(ServiceSuspended {}.into());
    out
}

pub(super) fn resume(state: &ServiceState, deploy: DeployId) -> Decision {
    if state.status != ServiceStatus::Suspended {
        return Ok(vec![]);
    }
    let cfg = config(state)?;
    let mut out: Vec<Event> = vec![ServiceResumed {}.into()];
    out.extend(deploys::deploy_of_config(
        state,
        cfg,
        deploy,
        DeployTrigger::ServiceResumed,
    )?);
    Ok(out)
}

pub(super) fn update_disk(
    state: &ServiceState,
    name: Option<String>,
    mount_path: Option<String>,
    size_gb: Option<u32>,
) -> Decision {
    let cfg = config(state)?;
    let Some(old) = cfg.disk.as_ref() else {
        return Err(DomainError::not_found("disk", ""));
    };
    if state.status == ServiceStatus::Deleted {
        return Err(DomainError::conflict("the service is deleted"));
    }
    let mut new = old.clone();
    if let Some(n) = name {
        new.name = n;
    }
    if let Some(p) = mount_path {
        new.mount_path = p;
    }
    if let Some(gb) = size_gb {
        if gb < old.size_gb {
            return Err(DomainError::invalid(
                "sizeGB",
                format!(
                    "a disk only grows: it has {} GB, so ask for {} or more",
                    old.size_gb, old.size_gb
                ),
            ));
        }
        new.size_gb = gb;
    }
    validate::disk(&new, cfg.service_type, cfg.num_instances)?;
    if new == *old {
        return Ok(vec![]);
    }
    Ok(vec![DiskUpdated { disk: new }.into()])
}

/// A deploy of the service's configuration as `change` leaves it, when it
/// is active (a suspended service deploys what it has when resumed).
pub(super) fn redeploy_after(state: &ServiceState, change: &Event, deploy: DeployId) -> Decision {
    if state.status != ServiceStatus::Active {
        return Ok(vec![]);
    }
    let mut after = state.clone();
    apply(&mut after, change, None);
    let cfg = config(&after)?;
    deploys::deploy_of_config(state, cfg, deploy, DeployTrigger::ServiceUpdated)
}

pub(super) fn add_disk(
    state: &ServiceState,
    disk: berth_schemas::model::Disk,
    deploy: DeployId,
) -> Decision {
    let cfg = config(state)?;
    if state.status == ServiceStatus::Deleted {
        return Err(DomainError::conflict("the service is deleted"));
    }
    match &cfg.disk {
        Some(d) if *d == disk => return Ok(vec![]),
        Some(d) => {
            return Err(DomainError::invalid(
                "serviceId",
                format!(
                    "the service has a disk already ({}, at {}): a service has one",
                    d.id, d.mount_path
                ),
            ))
        }
        None => {}
    }
    if state.autoscaling.enabled().is_some() {
        return Err(DomainError::invalid(
            "serviceId",
            "the service is autoscaled, and a service with a disk runs one instance: remove its autoscaling first",
        ));
    }
    validate::disk(&disk, cfg.service_type, cfg.num_instances)?;
    let added: Event = DiskAdded { disk }.into();
    let mut out = redeploy_after(state, &added, deploy)?;
    out.insert(0, added);
    Ok(out)
}

pub(super) fn remove_disk(state: &ServiceState, deploy: DeployId) -> Decision {
    let cfg = config(state)?;
    if state.status == ServiceStatus::Deleted {
        return Err(DomainError::conflict("the service is deleted"));
    }
    let Some(d) = &cfg.disk else {
        return Ok(vec![]);
    };
    let removed: Event = DiskRemoved { disk: d.id.clone() }.into();
    let mut out = redeploy_after(state, &removed, deploy)?;
    out.insert(0, removed);
    Ok(out)
}

pub(super) fn set_log_stream(
    state: &ServiceState,
    stream: Option<berth_schemas::model::LogStreamOverride>,
) -> Decision {
    config(state)?;
    if state.status == ServiceStatus::Deleted {
        return Err(DomainError::conflict("the service is deleted"));
    }
    if let Some(o) = &stream {
        crate::log_stream::check_override(o)?;
    }
    if stream == state.log_stream {
        return Ok(vec![]);
    }
    Ok(vec![LogStreamOverrideChanged { stream }.into()])
}

pub(super) fn delete(state: &ServiceState) -> Vec<Event> {
    let mut out = stop_everything(state);
    out.push(ServiceDeleted {}.into());
    out
}

pub(super) fn scale(state: &ServiceState, to: u32, ctx: &Ctx) -> Decision {
    let cfg = config(state)?;
    if cfg.service_type == ServiceType::CronJob {
        return Err(DomainError::invalid(
            "numInstances",
            "cron jobs have no instances to scale",
        ));
    }
    validate::num_instances(to, ctx.max_instances)?;
    if cfg.disk.is_some() && to > 1 {
        return Err(DomainError::invalid(
            "numInstances",
            validate::DISK_ONE_INSTANCE,
        ));
    }
    if let Some(a) = state.autoscaling.enabled() {
        return Err(DomainError::conflict(format!(
            "autoscaling sets this service's instance count (between {} and {}); change its autoscaling, or remove it, to scale by hand",
            a.min, a.max
        )));
    }
    if state.status == ServiceStatus::Suspended {
        return Err(DomainError::conflict(
            "service is suspended; resume it to scale",
        ));
    }
    if to == cfg.num_instances {
        return Ok(vec![]);
    }
    Ok(vec![InstanceCountChanged {
        from: cfg.num_instances,
        to,
    }
    .into()])
}

pub(super) fn restart(state: &ServiceState) -> Decision {
    let cfg = config(state)?;
    if cfg.service_type == ServiceType::CronJob {
        return Err(DomainError::invalid(
            "type",
            "cron jobs have no instances to restart",
        ));
    }
    if state.status == ServiceStatus::Suspended {
        return Err(DomainError::conflict(
            "service is suspended; resume it instead",
        ));
    }
    if state.live.is_none() {
        return Err(DomainError::conflict(
            "service has no live deploy, so no instances to restart",
        ));
    }
    Ok(vec![RestartRequested {}.into()])
}

/// Merges the settings an update changed into `cfg`.
pub(super) fn merge(cfg: &mut ServiceConfig, s: &ServiceSettings) {
    fn set<T: Clone>(field: &mut T, value: &Option<T>) {
        if let Some(v) = value {
            *field = v.clone();
        }
    }
    set(&mut cfg.name, &s.name);
    set(&mut cfg.image, &s.image);
    set(&mut cfg.credential, &s.credential);
    set(&mut cfg.plan, &s.plan);
    set(&mut cfg.docker_command, &s.docker_command);
    set(&mut cfg.env_vars, &s.env_vars);
    set(&mut cfg.secret_files, &s.secret_files);
    set(&mut cfg.pre_deploy_command, &s.pre_deploy_command);
    set(&mut cfg.health_check_path, &s.health_check_path);
    if let Some(p) = &s.schedule {
        cfg.schedule = Some(p.clone());
    }
    set(&mut cfg.notify, &s.notify);
    set(&mut cfg.overlap_policy, &s.overlap_policy);
    set(&mut cfg.shutdown_delay_secs, &s.shutdown_delay_secs);
    set(&mut cfg.https_redirect, &s.https_redirect);
    set(&mut cfg.ip_allow_list, &s.ip_allow_list);
}

/// Applies a settings or lifecycle event; any other leaves `s` unchanged.
pub(super) fn apply(s: &mut ServiceState, event: &Event, time: Option<DateTime<Utc>>) {
    match event {
        Event::ServiceCreated(e) if s.status == ServiceStatus::NotCreated => {
            s.status = ServiceStatus::Active;
            s.config = Some(e.clone());
            s.created_at = time;
            s.updated_at = time;
        }
        Event::ServiceUpdated(e) => {
            if let Some(c) = s.config.as_mut() {
                merge(c, &e.settings);
                s.updated_at = time;
            }
        }
        Event::MaintenanceModeEnabled(e) => {
            if let Some(c) = s.config.as_mut() {
                c.maintenance_mode.get_or_insert_default().enabled = e.enabled;
                s.updated_at = time;
            }
        }
        Event::MaintenanceModeUriUpdated(e) => {
            if let Some(c) = s.config.as_mut() {
                c.maintenance_mode.get_or_insert_default().uri = e.to_uri.clone();
                s.updated_at = time;
            }
        }
        Event::DeployHookKeyRegenerated(e) => {
            if let Some(c) = s.config.as_mut() {
                c.hook_key = e.hook_key.clone();
            }
        }
        Event::DiskAdded(e) => {
            if let Some(c) = s.config.as_mut() {
                c.disk = Some(e.disk.clone());
                s.disk_node = None;
                s.disk_added_at = time;
                s.disk_updated_at = time;
                s.updated_at = time;
            }
        }
        Event::DiskRemoved(e) => {
            if let Some(c) = s.config.as_mut() {
                if c.disk.as_ref().is_some_and(|d| d.id == e.disk) {
                    c.disk = None;
                    s.disk_node = None;
                    s.disk_added_at = None;
                    s.disk_updated_at = None;
                    s.updated_at = time;
                }
            }
        }
        Event::DiskUpdated(e) => {
            if let Some(c) = s.config.as_mut() {
                c.disk = Some(e.disk.clone());
                s.disk_updated_at = time;
                s.updated_at = time;
            }
        }
        Event::LogStreamOverrideChanged(e) if s.config.is_some() => {
            s.log_stream = e.stream.clone();
        }
        Event::InstanceCountChanged(e) => {
            if let Some(c) = s.config.as_mut() {
                c.num_instances = e.to;
                s.updated_at = time;
            }
        }
        Event::ServiceSuspended(_) if s.status == ServiceStatus::Active => {
            s.status = ServiceStatus::Suspended;
            s.updated_at = time;
        }
        Event::ServiceResumed(_) if s.status == ServiceStatus::Suspended => {
            s.status = ServiceStatus::Active;
            s.updated_at = time;
        }
        Event::ServiceDeleted(_) if s.exists() => {
            s.status = ServiceStatus::Deleted;
            s.updated_at = time;
        }
        Event::ServiceCreationAbandoned(_) if s.status == ServiceStatus::NotCreated => {
            s.status = ServiceStatus::Deleted;
            s.updated_at = time;
        }
        Event::RestartRequested(_) => {
            s.restart_requested_at = time;
        }
        _ => {}
    }
}
