//! No manager: nothing is written but `/etc/resolv.conf`; the live apply does the work.

use std::path::Path;

use super::{Manager, Rendered};
use crate::detect::ResolvConf;
use crate::plan::IfacePlan;
use crate::render::Renderer;

pub(crate) struct NoManager;

impl Manager for NoManager {
    fn renderer(&self) -> Renderer {
        Renderer::None
    }

    fn in_use(&self, _root: &Path) -> bool {
        true
    }

    fn running(&self, _root: &Path) -> bool {
        false
    }

    fn render(&self, _plan: &IfacePlan) -> Rendered {
        Rendered::Nothing
    }

    fn carries_dns(&self, _resolv: &ResolvConf) -> bool {
        false
    }
}
