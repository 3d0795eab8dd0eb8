//! The timing hook: reports each request to a [`RequestHook`] when its response body ends, with
//! the latency and the bytes sent, in the manner of tower-http's `on_response` callbacks.
//!
//! The hook decides what to keep: the gateway's hook prints the access line and queues a row
//! for the request log, so this layer needs nothing from either.

use bytes::Buf;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tower::{Layer, Service};

/// Callbacks for the stages of one request. Each request calls `on_request`, then at most one
/// `on_response`, then exactly one `on_end`.
pub trait RequestHook: Clone + Send + Sync + 'static {
    /// The hook's record of a request between its stages.
    type State: Send + 'static;

    /// Called when the request arrives, before the inner service receives it. The hook may
    /// add extensions to the request, such as a counter that the inner service updates.
    fn on_request<B>(&self, request: &mut Request<B>) -> Self::State;

    /// Called when the response head is ready.
    fn on_response<B>(&self, state: &mut Self::State, response: &Response<B>);

    /// Called once when the response body has ended, failed or been dropped, or when the
    /// request was dropped before a response was made (then `on_response` was not called).
    fn on_end(&self, state: Self::State, end: &RequestEnd);

    /// Returns whether the hook reports anything. When it returns false, no method above is
    /// called, and requests skip the clock, the hook's clone and the report's allocation.
    fn is_active(&self) -> bool {
        true
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy)]
pub struct RequestEnd {
    /// Time from the request's arrival to the end of its response body.
    pub latency: Duration,
    /// Bytes of response body sent.
    pub bytes_sent: u64,
    /// False when the body failed or was dropped before its end, or no response was made.
    pub completed: bool,
}

/// Layer that applies [`Timing`].
#[derive(Debug, Clone)]
pub struct TimingLayer<H> {
    hook: H,
    confirmed_writes: bool,
}

impl<H> TimingLayer<H> {
    /// Creates a layer that reports to `hook`.
    pub fn new(hook: H) -> TimingLayer<H> {
        TimingLayer {
            hook,
            confirmed_writes: false,
        }
    }

    /// Reports a response complete only once the server confirms that it wrote all of it,
    /// for a server that polls each response body once more after writing the body's end
    /// (or the head alone of a response without content). Without a confirmation, a body
    /// that handed out its end counts as complete, although the write of that end may fail.
    pub fn with_confirmed_writes(mut self) -> TimingLayer<H> {
        self.confirmed_writes = true;
        self
    }
}

impl<S, H: Clone> Layer<S> for TimingLayer<H> {
    type Service = Timing<S, H>;

    fn layer(&self, inner: S) -> Timing<S, H> {
        Timing {
            inner,
            hook: self.hook.clone(),
            confirmed_writes: self.confirmed_writes,
        }
    }
}

/// Measures each request and reports it to a [`RequestHook`].
#[derive(Debug, Clone)]
pub struct Timing<S, H> {
    inner: S,
    hook: H,
    confirmed_writes: bool,
}

impl<S, H, ReqBody, ResBody> Service<Request<ReqBody>> for Timing<S, H>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    H: RequestHook,
    ResBody: Body,
{
    type Response = Response<TimedBody<ResBody, H>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, H>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let report = self.hook.is_active().then(|| {
            Box::new(Report {
                started: Instant::now(),
                bodiless: request.method() == Method::HEAD,
                state: self.hook.on_request(&mut request),
                hook: self.hook.clone(),
                bytes_sent: 0,
                confirmed_writes: self.confirmed_writes,
                unconfirmed: None,
                end_handed_out: false,
            })
        });
        ResponseFuture {
            inner: self.inner.call(request),
            report: UnansweredReport(report),
        }
    }
}

/// A request's report while it is under way. It is boxed, so the futures and bodies that
/// carry it stay small as layers move them, and hold only `None` when the hook is inactive.
struct Report<H: RequestHook> {
    hook: H,
    state: H::State,
    started: Instant,
    /// Bytes of response body sent: handed to the server, or with confirmed writes, written.
    bytes_sent: u64,
    /// Whether the response has no content to send (RFC 9110 section 6.4.1): the response to
    /// HEAD, a 1xx, 204 or 304. The server then sends the head alone.
    bodiless: bool,
    /// Whether the server confirms its writes (see [`TimingLayer::with_confirmed_writes`]).
    confirmed_writes: bool,
    /// With confirmed writes, the data bytes of the last frame handed to the server until it
    /// polls again. A server writes a frame before it polls for another, so a frame that the
    /// server never came back after may not have reached the client.
    unconfirmed: Option<u64>,
    /// With confirmed writes, whether the body's end (or its trailers, which end it) went to
    /// the server, which confirms it by polling once more.
    end_handed_out: bool,
}

impl<H: RequestHook> Report<H> {
    fn finish(self, completed: bool) {
        let end = RequestEnd {
            latency: self.started.elapsed(),
            bytes_sent: self.bytes_sent,
            completed,
        };
        self.hook.on_end(self.state, &end);
    }
}

/// Reports to `hook` a request that ended before it reached a [`Timing`] service, such as a
/// request head that the server rejected. `state` is the hook's record of the request and
/// `started` the time it began. The report takes the same path as a timed request's, and
/// counts no response body bytes.
pub fn report_unserved<H: RequestHook>(
    hook: &H,
    state: H::State,
    started: Instant,
    completed: bool,
) {
    let report = Report {
        hook: hook.clone(),
        state,
        started,
        bytes_sent: 0,
        bodiless: true,
        confirmed_writes: false,
        unconfirmed: None,
        end_handed_out: false,
    };
    report.finish(completed);
}

pin_project_lite::pin_project! {
    /// Response future of [`Timing`].
    pub struct ResponseFuture<F, H: RequestHook> {
        // Fields drop in order, so the inner future is gone before the report ends: an inner
        // service that leaves a record on its way out has left it by then.
        #[pin]
        inner: F,
        report: UnansweredReport<H>,
    }
}

/// The report of a request still waiting for its response. Dropped with it, before a response:
/// the client went away or the server cut the connection off, and the request still ends,
/// without a response.
struct UnansweredReport<H: RequestHook>(Option<Box<Report<H>>>);

impl<H: RequestHook> Drop for UnansweredReport<H> {
    fn drop(&mut self) {
        if let Some(report) = self.0.take() {
            (*report).finish(false);
        }
    }
}

impl<F, H, ResBody, E> Future for ResponseFuture<F, H>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    H: RequestHook,
    ResBody: Body,
{
    type Output = Result<Response<TimedBody<ResBody, H>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut report = this.report.0.take();
        match result {
            Ok(response) => {
                if let Some(report) = &mut report {
                    let status = response.status();
                    report.bodiless |= status.is_informational()
                        || status == StatusCode::NO_CONTENT
                        || status == StatusCode::NOT_MODIFIED;
                    report.hook.on_response(&mut report.state, &response);
                }
                Poll::Ready(Ok(response.map(|body| TimedBody {
                    inner: body,
                    report,
                })))
            }
            Err(error) => {
                if let Some(report) = report {
                    (*report).finish(false);
                }
                Poll::Ready(Err(error))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports to the hook when it ends.
    pub struct TimedBody<B: Body, H: RequestHook> {
        #[pin]
        inner: B,
        report: Option<Box<Report<H>>>,
    }

    impl<B: Body, H: RequestHook> PinnedDrop for TimedBody<B, H> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(report) = this.report.take() {
                // With confirmed writes, a body dropped before the confirmation was not written
                // whole: a write failed or timed out. Otherwise a server stops once it has sent
                // what the response has, so a bodiless response or a body read to its end may
                // be dropped unpolled.
                let completed = !report.confirmed_writes
                    && (report.bodiless || this.inner.is_end_stream());
                (*report).finish(completed);
            }
        }
    }
}

impl<B: Body, H: RequestHook> Body for TimedBody<B, H> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        if let Some(report) = this.report.as_mut()
            && report.confirmed_writes
        {
            // The server polls for a frame after it has written the one before, and once
            // more after the end.
            report.bytes_sent += report.unconfirmed.take().unwrap_or(0);
            if report.bodiless || report.end_handed_out {
                if let Some(report) = this.report.take() {
                    (*report).finish(true);
                }
                return Poll::Ready(None);
            }
        }
        let polled = ready!(this.inner.poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(report) = this.report.as_mut() {
                    let bytes = frame.data_ref().map_or(0, |data| data.remaining() as u64);
                    if report.confirmed_writes {
                        report.unconfirmed = Some(bytes);
                        report.end_handed_out = frame.is_trailers();
                    } else {
                        report.bytes_sent += bytes;
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(report) = this.report.take() {
                    (*report).finish(false);
                }
            }
            None => match this.report.as_mut() {
                Some(report) if report.confirmed_writes => report.end_handed_out = true,
                _ => {
                    if let Some(report) = this.report.take() {
                        (*report).finish(true);
                    }
                }
            },
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use tower::ServiceExt;

    /// Path, status, bytes sent and completion of one reported request.
    type Reported = (String, u16, u64, bool);

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Reported>>>);

    impl RequestHook for Recorder {
        type State = (String, u16);

        fn on_request<B>(&self, request: &mut Request<B>) -> Self::State {
            (request.uri().path().to_owned(), 0)
        }

        fn on_response<B>(&self, state: &mut Self::State, response: &Response<B>) {
            state.1 = response.status().as_u16();
        }

        fn on_end(&self, state: Self::State, end: &RequestEnd) {
            self.0
                .lock()
                .unwrap()
                .push((state.0, state.1, end.bytes_sent, end.completed));
        }
    }

    #[tokio::test]
    async fn reports_once_after_body() {
        let recorder = Recorder::default();
        let service =
            TimingLayer::new(recorder.clone()).layer(tower::service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
            }));
        let request = Request::builder().uri("/a").body(()).unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert!(
            recorder.0.lock().unwrap().is_empty(),
            "reported before the body ended"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        let reports = recorder.0.lock().unwrap().clone();
        assert_eq!(reports, [("/a".to_owned(), 200, 5, true)]);
    }

    #[test]
    fn unserved_request_reports_once() {
        let recorder = Recorder::default();
        report_unserved(
            &recorder,
            ("/rejected".to_owned(), 400),
            Instant::now(),
            true,
        );
        let reports = recorder.0.lock().unwrap().clone();
        assert_eq!(reports, [("/rejected".to_owned(), 400, 0, true)]);
    }

    #[tokio::test]
    async fn dropped_request_reports_incomplete() {
        let recorder = Recorder::default();
        let mut service =
            TimingLayer::new(recorder.clone()).layer(tower::service_fn(|_: Request<()>| async {
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }));
        let future = service.call(Request::builder().uri("/gone").body(()).unwrap());
        drop(future);
        let reports = recorder.0.lock().unwrap().clone();
        assert_eq!(reports, [("/gone".to_owned(), 0, 0, false)]);
    }

    /// Appends "inner dropped" to its list when dropped.
    struct DropMark(Arc<Mutex<Vec<&'static str>>>);

    impl Drop for DropMark {
        fn drop(&mut self) {
            self.0.lock().unwrap().push("inner dropped");
        }
    }

    /// A hook that appends "report ended" to a list when a request ends.
    #[derive(Clone)]
    struct EndMark(Arc<Mutex<Vec<&'static str>>>);

    impl RequestHook for EndMark {
        type State = ();

        fn on_request<B>(&self, _: &mut Request<B>) {}

        fn on_response<B>(&self, (): &mut (), _: &Response<B>) {}

        fn on_end(&self, (): (), _: &RequestEnd) {
            self.0.lock().unwrap().push("report ended");
        }
    }

    #[tokio::test]
    async fn dropped_inner_goes_before_report() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let marks = Arc::clone(&events);
        let mut service = TimingLayer::new(EndMark(Arc::clone(&events))).layer(tower::service_fn(
            move |_: Request<()>| {
                let mark = DropMark(Arc::clone(&marks));
                async move {
                    let _mark = mark;
                    std::future::pending::<()>().await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            },
        ));
        drop(service.call(Request::new(())));
        assert_eq!(*events.lock().unwrap(), ["inner dropped", "report ended"]);
    }

    /// A hook that is off: any call to it fails the test.
    #[derive(Clone)]
    struct Off;

    impl RequestHook for Off {
        type State = ();

        fn on_request<B>(&self, _: &mut Request<B>) {
            panic!("on_request called on a hook that is off");
        }

        fn on_response<B>(&self, (): &mut (), _: &Response<B>) {
            panic!("on_response called on a hook that is off");
        }

        fn on_end(&self, (): (), _: &RequestEnd) {
            panic!("on_end called on a hook that is off");
        }

        fn is_active(&self) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn inactive_hook_is_never_called() {
        let service = TimingLayer::new(Off).layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        }));
        let response = service.clone().oneshot(Request::new(())).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");

        let mut service = service;
        drop(service.call(Request::new(())));
        let response = service.oneshot(Request::new(())).await.unwrap();
        drop(response);
    }

    /// A body of data frames and, when given, trailers. It ends as soon as its last frame is
    /// taken.
    struct Frames {
        data: std::collections::VecDeque<Bytes>,
        trailers: Option<http::HeaderMap>,
    }

    impl Frames {
        fn of(texts: &[&'static str]) -> Frames {
            let data = texts.iter().map(|text| Bytes::from_static(text.as_bytes()));
            Frames {
                data: data.collect(),
                trailers: None,
            }
        }

        fn with_trailers(mut self) -> Frames {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-checksum", http::HeaderValue::from_static("42"));
            self.trailers = Some(trailers);
            self
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let frame = match self.data.pop_front() {
                Some(data) => Some(Frame::data(data)),
                None => self.trailers.take().map(Frame::trailers),
            };
            Poll::Ready(frame.map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.data.is_empty() && self.trailers.is_none()
        }
    }

    /// Sends a request with `method` through the timing layer to a service that responds with
    /// `body` and `status`, and returns the recorder and the response's body.
    async fn respond(
        layer: fn(Recorder) -> TimingLayer<Recorder>,
        method: Method,
        status: StatusCode,
        body: Frames,
    ) -> (Recorder, TimedBody<Frames, Recorder>) {
        let recorder = Recorder::default();
        let mut body = Some(body);
        let service = layer(recorder.clone()).layer(tower::service_fn(move |_: Request<()>| {
            let mut response = Response::new(body.take().unwrap());
            *response.status_mut() = status;
            async move { Ok::<_, Infallible>(response) }
        }));
        let request = Request::builder().method(method).body(()).unwrap();
        let response = service.oneshot(request).await.unwrap();
        (recorder, response.into_body())
    }

    fn confirmed(recorder: Recorder) -> TimingLayer<Recorder> {
        TimingLayer::new(recorder).with_confirmed_writes()
    }

    /// Polls `body` `times` times, as a server does when it takes frames or confirms.
    async fn poll_times(body: &mut TimedBody<Frames, Recorder>, times: usize) {
        for _ in 0..times {
            let _ = body.frame().await;
        }
    }

    fn reported(recorder: &Recorder) -> Vec<Reported> {
        recorder.0.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn bodiless_responses_complete_unpolled() {
        for (method, status) in [
            (Method::HEAD, StatusCode::NOT_FOUND),
            (Method::GET, StatusCode::NO_CONTENT),
            (Method::GET, StatusCode::NOT_MODIFIED),
        ] {
            // A body the server does not send, as the gateway's own errors have.
            let body = Frames::of(&["{}"]);
            let (recorder, body) = respond(TimingLayer::new, method.clone(), status, body).await;
            drop(body);
            let reports = reported(&recorder);
            assert_eq!(reports.len(), 1);
            assert!(reports[0].3, "{method} answered {status} is complete");
        }
    }

    #[tokio::test]
    async fn confirmed_bodiless_response_needs_one_poll() {
        let body = Frames::of(&["{}"]);
        let (recorder, body) = respond(confirmed, Method::HEAD, StatusCode::OK, body).await;
        drop(body);
        assert!(!reported(&recorder)[0].3, "head never confirmed");

        let body = Frames::of(&["{}"]);
        let (recorder, mut body) = respond(confirmed, Method::HEAD, StatusCode::OK, body).await;
        poll_times(&mut body, 1).await;
        assert_eq!(reported(&recorder), [("/".to_owned(), 200, 0, true)]);
    }

    #[tokio::test]
    async fn unwritten_last_frame_is_incomplete() {
        let body = Frames::of(&["first", "second", "last"]);
        let (recorder, mut body) = respond(confirmed, Method::GET, StatusCode::OK, body).await;
        // The server takes every frame, but its write of the last one fails, so it drops
        // the body without polling again.
        poll_times(&mut body, 3).await;
        assert!(reported(&recorder).is_empty());
        drop(body);
        let reports = reported(&recorder);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].2, 11, "only the frames written count");
        assert!(
            !reports[0].3,
            "a body whose last frame was not written is not complete"
        );
    }

    #[tokio::test]
    async fn unconfirmed_end_is_incomplete() {
        let body = Frames::of(&["first", "second", "last"]);
        let (recorder, mut body) = respond(confirmed, Method::GET, StatusCode::OK, body).await;
        // Every frame and the end are taken, but the write of the last chunk fails.
        poll_times(&mut body, 4).await;
        drop(body);
        assert_eq!(reported(&recorder), [("/".to_owned(), 200, 15, false)]);
    }

    #[tokio::test]
    async fn confirmed_end_completes() {
        let body = Frames::of(&["first", "second", "last"]);
        let (recorder, mut body) = respond(confirmed, Method::GET, StatusCode::OK, body).await;
        poll_times(&mut body, 5).await;
        assert_eq!(reported(&recorder), [("/".to_owned(), 200, 15, true)]);
    }

    #[tokio::test]
    async fn trailers_end_the_body() {
        // Data, then trailers, then the confirmation: the server polls no further.
        let body = Frames::of(&["abc"]).with_trailers();
        let (recorder, mut body) = respond(confirmed, Method::GET, StatusCode::OK, body).await;
        poll_times(&mut body, 3).await;
        assert_eq!(reported(&recorder), [("/".to_owned(), 200, 3, true)]);

        // Without confirmed writes, a body dropped after its trailers is complete.
        let body = Frames::of(&["abc"]).with_trailers();
        let (recorder, mut body) =
            respond(TimingLayer::new, Method::GET, StatusCode::OK, body).await;
        poll_times(&mut body, 2).await;
        drop(body);
        assert_eq!(reported(&recorder), [("/".to_owned(), 200, 3, true)]);
    }

    #[tokio::test]
    async fn body_read_to_its_end_counts_every_frame() {
        let body = Frames::of(&["first", "second", "last"]);
        let (recorder, body) = respond(TimingLayer::new, Method::GET, StatusCode::OK, body).await;
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "firstsecondlast");
        assert_eq!(reported(&recorder), [("/".to_owned(), 200, 15, true)]);
    }

    #[tokio::test]
    async fn dropped_body_reports_incomplete() {
        let recorder = Recorder::default();
        let service =
            TimingLayer::new(recorder.clone()).layer(tower::service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
            }));
        let response = service.oneshot(Request::new(())).await.unwrap();
        drop(response);
        let reports = recorder.0.lock().unwrap().clone();
        assert_eq!(reports.len(), 1);
        assert!(!reports[0].3, "a body dropped unread is not complete");
    }
}
