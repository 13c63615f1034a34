//! The Kubernetes client, with a layer that counts API requests by verb, resource and status
//! class (`capturefleet_operator_api_requests_total`), so that writes can be measured from the
//! operator's own metrics.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};
use prometheus::IntCounterVec;
use tower::{Layer, Service};

/// Build the operator's client from the usual kubeconfig/in-cluster configuration.
pub async fn build(requests: IntCounterVec) -> Result<Client, kube::Error> {
    let mut config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    // Generous read timeout for watches; writes are small.
    config.read_timeout = None;
    let builder = ClientBuilder::try_from(config)?;
    Ok(builder.with_layer(&CountRequests { requests }).build())
}

/// Counts requests.
#[derive(Clone)]
pub struct CountRequests {
    requests: IntCounterVec,
}

impl<S> Layer<S> for CountRequests {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            requests: self.requests.clone(),
        }
    }
}

/// The counting service.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    requests: IntCounterVec,
}

/// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` from an API request.
pub fn verb(method: &Method, query: Option<&str>, path_is_collection: bool) -> &'static str {
    match *method {
        Method::GET if query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1")) => "watch",
        Method::GET if path_is_collection => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// The resource (and subresource) of an API path, e.g. `pods` or `capturedevices/status`, and
/// whether the path names a collection.
pub fn resource(path: &str) -> (String, bool) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/group/version/...
    let rest: &[&str] = match parts.first() {
        Some(&"api") if parts.len() >= 2 => &parts[2..],
        Some(&"apis") if parts.len() >= 3 => &parts[3..],
        _ => return ("other".into(), false),
    };
    let rest = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        &rest[2..]
    } else {
        rest
    };
    match rest {
        [] => ("other".into(), false),
        [kind] => ((*kind).to_owned(), true),
        [kind, _name] => ((*kind).to_owned(), false),
        [kind, _name, sub, ..] => (format!("{kind}/{sub}"), false),
    }
}

impl<S, B> Service<Request<Body>> for Counted<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (resource, collection) = resource(request.uri().path());
        let verb = verb(request.method(), request.uri().query(), collection);
        let counter = self.requests.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                Ok(response) => match response.status().as_u16() {
                    200..=299 => "2xx",
                    409 => "409",
                    404 => "404",
                    429 => "429",
                    400..=499 => "4xx",
                    _ => "5xx",
                },
                Err(_) => "error",
            };
            counter.with_label_values(&[verb, &resource, code]).inc();
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_requests() {
        assert_eq!(resource("/api/v1/namespaces/a/pods"), ("pods".into(), true));
        assert_eq!(resource("/api/v1/namespaces/a/pods/p1"), ("pods".into(), false));
        assert_eq!(
            resource("/apis/capturefleet.dev/v1alpha1/namespaces/a/capturedevices/x/status"),
            ("capturedevices/status".into(), false)
        );
        assert_eq!(resource("/api/v1/nodes"), ("nodes".into(), true));
        assert_eq!(
            resource("/apis/capturefleet.dev/v1alpha1/capturedevices"),
            ("capturedevices".into(), true)
        );
        assert_eq!(verb(&Method::GET, Some("watch=true&resourceVersion=1"), true), "watch");
        assert_eq!(verb(&Method::GET, None, true), "list");
        assert_eq!(verb(&Method::PATCH, Some("fieldManager=x"), false), "patch");
    }
}
