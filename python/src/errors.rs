//! Rust errors as exceptions of the `rfaas.Error` hierarchy (defined in `rfaas/errors.py`,
//! where each class documents when it is raised).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use rfaas::client::{ClientError, InvokeError};
use rfaas::protocol::Status;

/// The exception classes, by name in `rfaas.errors`.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `rfaas.ConfigError`.
    Config,
    /// `rfaas.ClusterError`.
    Cluster,
    /// `rfaas.InvalidArgumentError`.
    InvalidArgument,
    /// `rfaas.InputTooLargeError`.
    InputTooLarge,
    /// `rfaas.UnknownFunctionError`.
    UnknownFunction,
    /// `rfaas.InvocationError`.
    Invocation,
    /// `rfaas.OutputTooLargeError`.
    OutputTooLarge,
    /// `rfaas.FunctionFailedError`.
    FunctionFailed,
    /// `rfaas.TimeoutError`.
    Timeout,
    /// `rfaas.ExecutorGoneError`.
    ExecutorGone,
    /// `rfaas.BusyError`.
    Busy,
    /// `rfaas.ClosedError`.
    Closed,
    /// `rfaas.SessionError`.
    Session,
    /// `rfaas.InitFailedError`.
    InitFailed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Config => "ConfigError",
            Kind::Cluster => "ClusterError",
            Kind::InvalidArgument => "InvalidArgumentError",
            Kind::InputTooLarge => "InputTooLargeError",
            Kind::UnknownFunction => "UnknownFunctionError",
            Kind::Invocation => "InvocationError",
            Kind::OutputTooLarge => "OutputTooLargeError",
            Kind::FunctionFailed => "FunctionFailedError",
            Kind::Timeout => "TimeoutError",
            Kind::ExecutorGone => "ExecutorGoneError",
            Kind::Busy => "BusyError",
            Kind::Closed => "ClosedError",
            Kind::Session => "SessionError",
            Kind::InitFailed => "InitFailedError",
        }
    }

    /// The exception `Kind(message)`.
    pub fn err(self, message: impl Into<String>) -> PyErr {
        let message = message.into();
        Python::attach(|py| match class(py, self) {
            Ok(cls) => PyErr::from_type(cls.clone(), (message,)),
            Err(e) => e,
        })
    }
}

static CLASSES: [PyOnceLock<Py<PyType>>; 14] = [const { PyOnceLock::new() }; 14];

fn class(py: Python<'_>, kind: Kind) -> PyResult<&Bound<'_, PyType>> {
    CLASSES[kind as usize].import(py, "rfaas.errors", kind.name())
}

/// A client (control plane) error as an exception.
pub fn client(e: ClientError) -> PyErr {
    let e = match e {
        // An invocation that failed inside a client call: the invocation's own exception.
        ClientError::Invocation(inner) => return invoke(inner),
        other => other,
    };
    let kind = match &e {
        ClientError::Invocation(_) => Kind::Invocation,
        ClientError::Manager { .. } | ClientError::Http { .. } | ClientError::Fabric(_) => {
            Kind::Cluster
        }
        ClientError::UnknownFunction(_) => Kind::UnknownFunction,
        ClientError::Invalid(_) => Kind::InvalidArgument,
        ClientError::InitFailed { .. } => Kind::InitFailed,
        ClientError::Io(_) | ClientError::Config(_) => Kind::Config,
    };
    kind.err(e.to_string())
}

/// An invocation error as an exception.
pub fn invoke(e: InvokeError) -> PyErr {
    let kind = match &e {
        InvokeError::Status(Status::OutputTooLarge) => Kind::OutputTooLarge,
        InvokeError::Status(Status::FunctionPanicked) => Kind::FunctionFailed,
        InvokeError::Status(Status::UnknownFunction) => Kind::UnknownFunction,
        InvokeError::Status(_) => Kind::Invocation,
        InvokeError::Timeout(_) => Kind::Timeout,
        InvokeError::ExecutorGone(_) => Kind::ExecutorGone,
        InvokeError::InputTooLarge { .. } => Kind::InputTooLarge,
        InvokeError::Invalid(_) => Kind::InvalidArgument,
        InvokeError::Busy => Kind::Busy,
    };
    let text = match &e {
        InvokeError::Status(Status::OutputTooLarge) => {
            "the function's output is larger than the output buffer (nothing was written)".into()
        }
        InvokeError::Status(Status::FunctionPanicked) => "the function panicked".into(),
        _ => e.to_string(),
    };
    kind.err(text)
}

/// A failure to get a bytes-like view of an argument, as `InvalidArgumentError` with the
/// original `TypeError`/`BufferError` as its cause.
pub fn buffer(py: Python<'_>, what: &str, cause: PyErr) -> PyErr {
    let e = Kind::InvalidArgument.err(format!("{what}: {}", cause.value(py)));
    e.set_cause(py, Some(cause));
    e
}
