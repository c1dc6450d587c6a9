//! The demo models where this build embeds them (the `demo` feature, on by default: scalewise's
//! `scalewise::demo`), and otherwise the same names with an error in place of the weights, so that
//! `--demo` still parses and a command that needs a demo model says what the build lacks. The build
//! without them is 27 MB smaller: the GPU run's (scripts/gpu/build.sh), whose benchmarks use random
//! weights of the official shapes.

#[cfg(feature = "demo")]
pub use scalewise::demo::{DemoModel, pipeline, var_state_dict};

#[cfg(not(feature = "demo"))]
pub use absent::{DemoModel, pipeline, var_state_dict};

#[cfg(not(feature = "demo"))]
mod absent {
    use std::fmt;
    use std::str::FromStr;

    use scalewise::generate::Pipeline;
    use scalewise::weights::StateDict;
    use scalewise::{DType, Device, Error, Result};

    /// Which built-in transformer a command asked for (as `scalewise::demo::DemoModel`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub enum DemoModel {
        #[default]
        Var,
        Mvar,
    }

    impl DemoModel {
        pub fn family(self) -> &'static str {
            match self {
                DemoModel::Var => "VAR",
                DemoModel::Mvar => "M-VAR",
            }
        }

        pub fn workload(self, dtype: DType) -> String {
            format!("demo-{self} {dtype}")
        }

        pub fn pipeline(self, _device: &Device, _dtype: Option<DType>) -> Result<Pipeline> {
            Err(missing())
        }
    }

    impl fmt::Display for DemoModel {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(match self {
                DemoModel::Var => "var",
                DemoModel::Mvar => "mvar",
            })
        }
    }

    impl FromStr for DemoModel {
        type Err = Error;

        fn from_str(s: &str) -> Result<Self> {
            match s.to_ascii_lowercase().as_str() {
                "var" => Ok(DemoModel::Var),
                "mvar" | "m-var" => Ok(DemoModel::Mvar),
                _ => Err(Error::InvalidArgument {
                    op: "demo",
                    msg: format!("unknown model {s:?}: the built-in ones are var and mvar"),
                }),
            }
        }
    }

    pub fn pipeline(_device: &Device, _dtype: Option<DType>) -> Result<Pipeline> {
        Err(missing())
    }

    pub fn var_state_dict() -> Result<StateDict> {
        Err(missing())
    }

    fn missing() -> Error {
        Error::InvalidArgument {
            op: "demo",
            msg: "this scalewise was built without the demo models (the `demo` cargo feature): give --var and --vae"
                .into(),
        }
    }
}
