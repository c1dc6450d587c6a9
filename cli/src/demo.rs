//! The demo models' pipelines where this build embeds their weights (the `demo` feature, on by
//! default: scalewise's own), and otherwise an error that says the build lacks them; `--demo` parses
//! either way (`scalewise::demo::DemoModel`). The build without them is 27 MB smaller: the GPU run's
//! (scripts/gpu/build.sh), whose benchmarks use random weights of the official shapes.

use scalewise::generate::Pipeline;
use scalewise::weights::StateDict;
use scalewise::{DType, Device, Result};

pub use scalewise::demo::DemoModel;

/// `model`'s pipeline on `device` (`dtype`: f16 where the device has SHADER_F16, unless given).
pub fn pipeline(model: DemoModel, device: &Device, dtype: Option<DType>) -> Result<Pipeline> {
    #[cfg(feature = "demo")]
    return model.pipeline(device, dtype);
    #[cfg(not(feature = "demo"))]
    {
        let _ = (model, device, dtype);
        Err(missing())
    }
}

/// The VAR demo's transformer as a state_dict.
pub fn var_state_dict() -> Result<StateDict> {
    #[cfg(feature = "demo")]
    return scalewise::demo::var_state_dict();
    #[cfg(not(feature = "demo"))]
    Err(missing())
}

#[cfg(not(feature = "demo"))]
fn missing() -> scalewise::Error {
    scalewise::Error::InvalidArgument {
        op: "demo",
        msg: "this scalewise was built without the demo models (the `demo` cargo feature): give --var and --vae".into(),
    }
}
