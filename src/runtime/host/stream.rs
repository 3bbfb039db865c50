//! The transport of the high-level host APIs, defined once for both
//! adapters: plain TCP or, with the `rustls` feature, TLS, chosen when
//! connecting. Each adapter instantiates it with its own streams.

/// `$body` with `$s` bound to the stream in whichever arm `$stream` (a
/// `HostStream`, inside its own `impl`) holds: one match for every method
/// that both arms have.
macro_rules! on_arm {
    ($stream:expr, $s:ident => $body:expr) => {
        match $stream {
            Self::Plain($s) => $body,
            #[cfg(feature = "rustls")]
            Self::Tls($s) => $body,
        }
    };
}

pub(crate) use on_arm;

/// Defines `HostStream`: an enum of a plain and (feature `rustls`) a boxed
/// TLS stream, both `embedded_io_async` transports with `io::Error`, that
/// delegates to the arm it holds; `is_tls` and the `From` conversions.
/// Without the `rustls` feature there is only the plain arm, so the enum is
/// exactly the plain stream (no tag, no branch).
macro_rules! host_stream {
    ($(#[$meta:meta])* plain: $plain:ty, tls: $tls:ty $(,)?) => {
        $(#[$meta])*
        pub enum HostStream {
            /// Plain TCP.
            Plain($plain),
            /// rustls over TCP (feature `rustls`). Boxed: the TLS state is
            /// large, and the plain arm should not pay for it.
            #[cfg(feature = "rustls")]
            Tls(std::boxed::Box<$tls>),
        }

        impl HostStream {
            /// Whether this is a TLS stream.
            pub fn is_tls(&self) -> bool {
                !matches!(self, Self::Plain(_))
            }
        }

        impl From<$plain> for HostStream {
            fn from(s: $plain) -> Self {
                Self::Plain(s)
            }
        }

        #[cfg(feature = "rustls")]
        impl From<$tls> for HostStream {
            fn from(s: $tls) -> Self {
                Self::Tls(std::boxed::Box::new(s))
            }
        }

        impl embedded_io_async::ErrorType for HostStream {
            type Error = std::io::Error;
        }

        impl embedded_io_async::Read for HostStream {
            /// Cancel-safe as the arm it delegates to.
            async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                $crate::runtime::host::stream::on_arm!(self, s => s.read(buf).await)
            }
        }

        impl embedded_io_async::Write for HostStream {
            /// Delegates to the arm it holds.
            async fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                $crate::runtime::host::stream::on_arm!(self, s => s.write(buf).await)
            }

            /// Delegates to the arm it holds.
            async fn flush(&mut self) -> std::io::Result<()> {
                $crate::runtime::host::stream::on_arm!(self, s => s.flush().await)
            }
        }
    };
}

pub(crate) use host_stream;
