//! [`ResponseFuture`]: what [`RequireApiKeyService`](super::RequireApiKeyService) returns.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Request;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::VerifyFuture;

pin_project! {
    /// The response future of [`RequireApiKeyService`](super::RequireApiKeyService).
    ///
    /// No allocation on a cache hit or a refusal; only a verifier call that cannot be answered
    /// at once is boxed.
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Verify {
            verify: VerifyFuture<S::Response>,
            // Boxed: the slow path allocates anyway, and the future every request carries stays
            // the size of the inner service's future.
            pending: Option<Box<(Request<ReqB>, S)>>,
        },
        Inner {
            #[pin]
            future: S::Future,
        },
        Done {
            response: Option<S::Response>,
        },
    }
}

impl<S, ReqB> ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    /// The inner service's future, the request having passed at once.
    pub(super) fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    /// A refusal, answered at once.
    pub(super) fn done(response: S::Response) -> Self {
        Self {
            state: State::Done {
                response: Some(response),
            },
        }
    }

    /// The verifier's answer first, then (if it passes) the inner service with this request.
    pub(super) fn verify(
        verify: VerifyFuture<S::Response>,
        request: Request<ReqB>,
        inner: S,
    ) -> Self {
        Self {
            state: State::Verify {
                verify,
                pending: Some(Box::new((request, inner))),
            },
        }
    }
}

impl<S, ReqB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Verify { verify, pending } => {
                    let decision = ready!(verify.as_mut().poll(cx));
                    let Some(pending) = pending.take() else {
                        // Only reachable if polled again after a panic in this branch.
                        return Poll::Pending;
                    };
                    let (mut request, mut inner) = *pending;
                    match decision {
                        Ok(principal) => {
                            principal.insert_into(request.extensions_mut());
                            let future = inner.call(request);
                            state.set(State::Inner { future });
                        }
                        Err(response) => state.set(State::Done {
                            response: Some(response),
                        }),
                    }
                }
                StateProj::Inner { future } => return future.poll(cx),
                StateProj::Done { response } => {
                    return match response.take() {
                        Some(response) => Poll::Ready(Ok(response)),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}
