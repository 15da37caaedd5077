//! `/hubs` (our extension): the linked hubs allocation chooses from.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;
use zerotouch_store::{HubInput, HubReader, HubRecord, RegistrationReader};
use zerotouch_wire::HubHostName;
use zerotouch_wire::enrollment::FieldError;
use zerotouch_wire::hub::{DEFAULT_WEIGHT, Hub, HubKind, MAX_WEIGHT, MIN_WEIGHT};

use super::timestamp;
use crate::auth::{Caller, HubWrite, Read};
use crate::http::error::ApiError;
use crate::http::request::{self, BODY_LIMIT, Json};

fn render(record: &HubRecord) -> Result<Value, ApiError> {
    let kind = HubKind::parse(&record.hub.kind)
        .ok_or_else(|| ApiError::internal(format!("stored hub kind {:?} is unknown", record.hub.kind)))?;
    // Secrets are write-only.
    let settings = match &record.hub.settings {
        Value::Object(fields) if !fields.is_empty() => {
            let mut fields = fields.clone();
            fields.retain(|name, _| !zerotouch_hub::SECRET_SETTINGS.contains(&name.as_str()));
            Some(Value::Object(fields))
        }
        _ => None,
    };
    let hub = Hub {
        host_name: record.hub.host_name.clone(),
        kind,
        settings,
        allocation_weight: Some(record.hub.allocation_weight),
        apply_allocation_policy: Some(record.hub.apply_allocation_policy),
        etag: Some(record.etag.clone()),
        created_date_time_utc: Some(timestamp(record.created_at)),
        last_updated_date_time_utc: Some(timestamp(record.updated_at)),
    };
    serde_json::to_value(hub).map_err(ApiError::internal)
}

fn parse_name(name: &str) -> Result<HubHostName, ApiError> {
    HubHostName::try_from(name).map_err(|e| ApiError::InvalidId(format!("hostName in the path: {e}")))
}

fn describe(name: &str) -> String {
    format!("hub {name:?}")
}

/// `GET /hubs`.
pub(super) async fn list(caller: Caller<Read>) -> Result<HttpResponse, ApiError> {
    let hubs = caller.hubs().list().await.map_err(ApiError::internal)?;
    let items = hubs.iter().map(render).collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(items))
}

/// `GET /hubs/{hostName}`.
pub(super) async fn get(caller: Caller<Read>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let host = parse_name(&name)?;
    let record = caller.hubs().get(host.as_str()).await.map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(render(&record)?))
}

/// `PUT /hubs/{hostName}`: link or change a hub, under `If-Match` (owners only).
pub(super) async fn put(
    caller: Caller<HubWrite>,
    hubs: web::Data<crate::hubs::Hubs>,
    req: HttpRequest,
    name: web::Path<String>,
    body: Json<BODY_LIMIT>,
) -> Result<HttpResponse, ApiError> {
    let host = parse_name(&name)?;
    let precondition = request::precondition(&req)?;
    let hub: Hub = zerotouch_wire::field::decode(body.0)?;
    let body_host =
        HubHostName::try_from(hub.host_name.as_str()).map_err(|e| FieldError::new("hostName", e.to_string()))?;
    if body_host != host {
        return Err(FieldError::new(
            "hostName",
            format!("{:?} differs from the host name in the URL ({:?})", hub.host_name, name.as_str()),
        )
        .into());
    }
    let weight = hub.allocation_weight.unwrap_or(DEFAULT_WEIGHT);
    if !(MIN_WEIGHT..=MAX_WEIGHT).contains(&weight) {
        return Err(FieldError::new(
            "allocationWeight",
            format!("must be from {MIN_WEIGHT} to {MAX_WEIGHT} (got {weight})"),
        )
        .into());
    }
    let settings = settings_of(caller.hubs(), hubs.outbound(), &host, &hub).await?;
    refuse_reserving_held_ids(caller.registrations(), hub.kind.as_str(), &settings).await?;
    let input = HubInput {
        host_name: host.as_str().to_owned(),
        kind: hub.kind.as_str().to_owned(),
        allocation_weight: weight,
        apply_allocation_policy: hub.apply_allocation_policy.unwrap_or(true),
        settings,
    };
    let (record, _created) =
        caller.hub_writer().put(input, &precondition).await.map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    Ok(request::with_etag(HttpResponse::Ok(), &record.etag).json(render(&record)?))
}

/// The settings to store for `hub`: checked by building its adapter (which does not contact the hub); secrets
/// left out are kept from the hub's current settings if its kind and address are unchanged, and must be sent again
/// when the address changes (`zerotouch_hub::carry_over_secrets`).
async fn settings_of(
    hubs: HubReader<'_>,
    outbound: &zerotouch_outbound::OutboundPolicy,
    host: &HubHostName,
    hub: &Hub,
) -> Result<Value, ApiError> {
    let settings = hub.settings.clone().unwrap_or_else(|| Value::Object(Default::default()));
    let Value::Object(mut fields) = settings else {
        return Err(FieldError::new("settings", "must be a JSON object").into());
    };
    if hub.kind == HubKind::None {
        if !fields.is_empty() {
            return Err(FieldError::new("settings", "a hub of kind none takes no settings").into());
        }
        return Ok(Value::Object(fields));
    }
    match hubs.get(host.as_str()).await {
        Ok(current) if current.hub.kind == hub.kind.as_str() => {
            if let Value::Object(stored) = current.hub.settings {
                zerotouch_hub::carry_over_secrets(&stored, &mut fields)?;
            }
        }
        Ok(_) | Err(zerotouch_store::StoreError::NotFound) => {}
        Err(e) => return Err(ApiError::internal(e)),
    }
    let settings = Value::Object(fields);
    zerotouch_hub::adapter_for(hub.kind.as_str(), host.as_str(), &settings, outbound)
        .map_err(|e| FieldError::new("settings", e.to_string()))?;
    Ok(settings)
}

/// Refuses settings that reserve a device id (a Mosquitto hub's admin user, its `reservedDeviceIds`) a registration
/// holds on any hub: reserved ids are reserved on every hub (see `zerotouch_hub::reserved_device_ids`), and a
/// device that holds one would be, or could become, that account on the broker.
async fn refuse_reserving_held_ids(
    registrations: RegistrationReader<'_>,
    kind: &str,
    settings: &Value,
) -> Result<(), ApiError> {
    let reserved = zerotouch_hub::reserved_device_ids(kind, settings);
    let holders = registrations.holding_device_ids(&reserved, 1).await.map_err(ApiError::internal)?;
    let Some(holder) = holders.first() else { return Ok(()) };
    let device_id = holder.device_id.as_deref().unwrap_or_default();
    let setting =
        if settings.get("username").and_then(Value::as_str).is_some_and(|u| u.trim().eq_ignore_ascii_case(device_id)) {
            "settings.username"
        } else {
            "settings.reservedDeviceIds"
        };
    Err(ApiError::ReservedDeviceIdInUse(format!(
        "{setting} reserves the device id {device_id:?}, which registration {:?} holds on hub {}: a device with \
         this id would be that account on the broker; delete that registration or choose another account name",
        holder.registration_id,
        holder.assigned_hub.as_deref().unwrap_or_default()
    )))
}

/// `DELETE /hubs/{hostName}`, under `If-Match` (owners only).
pub(super) async fn delete(
    caller: Caller<HubWrite>,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let host = parse_name(&name)?;
    let precondition = request::precondition(&req)?;
    caller
        .hub_writer()
        .delete(host.as_str(), &precondition)
        .await
        .map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /hubs/{hostName}/status`: the hub's health (its adapter's health check) and its outbox backlog.
pub(super) async fn status(
    _caller: Caller<Read>,
    hubs: web::Data<crate::hubs::Hubs>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let host = parse_name(&name)?;
    let status = hubs.status(host.as_str()).await.map_err(|e| ApiError::from_store(e, &describe(&name)))?;
    Ok(HttpResponse::Ok().json(status))
}
