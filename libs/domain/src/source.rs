//! A source: what is backed up, on which host, through which site.
//!
//! What `paths` means depends on the kind: folders or files to read for
//! [`SourceKind::Files`], the one disk image or block device for [`SourceKind::Image`], the
//! database names for [`SourceKind::Postgres`]. The kind and host are fixed when the source is
//! added.

use arca_events::{AggregateType, Event, QemuDisk, SourceAdded, SourceKind, SourceRemoved, SourceUpdated};

use crate::{Aggregate, Context, DomainError, Lifecycle, validate};

/// The longest host name, as DNS allows.
pub const MAX_HOST_CHARS: usize = 253;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub status: Lifecycle,
    pub name: String,
    /// `None` until added.
    pub kind: Option<SourceKind>,
    pub host: String,
    pub paths: Vec<String>,
    pub excludes: Vec<String>,
    /// Only workers of this site read it.
    pub site: Option<String>,
    pub pre_hook: Option<String>,
    pub post_hook: Option<String>,
    /// For an image a running qemu has open: where to ask it for changed blocks.
    pub qemu: Option<QemuDisk>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceCommand {
    Add {
        name: String,
        kind: SourceKind,
        host: String,
        paths: Vec<String>,
        excludes: Vec<String>,
        site: Option<String>,
        pre_hook: Option<String>,
        post_hook: Option<String>,
        qemu: Option<QemuDisk>,
    },
    /// Replaces everything but the kind and host.
    Update {
        name: String,
        paths: Vec<String>,
        excludes: Vec<String>,
        site: Option<String>,
        pre_hook: Option<String>,
        post_hook: Option<String>,
        qemu: Option<QemuDisk>,
    },
    Remove,
}

impl Aggregate for Source {
    const TYPE: AggregateType = AggregateType::Source;
    type Command = SourceCommand;

    fn handle(&self, command: &SourceCommand, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.tenant.require_exists()?;
        match command {
            SourceCommand::Add { name, kind, host, paths, excludes, site, pre_hook, post_hook, qemu } => {
                self.status.require_missing(AggregateType::Source)?;
                let name = validate::name("name", name)?;
                check_host(host)?;
                let definition = Definition { kind: *kind, paths, excludes, site, pre_hook, post_hook, qemu };
                definition.check()?;
                let added = SourceAdded {
                    name,
                    kind: *kind,
                    host: host.clone(),
                    paths: paths.clone(),
                    excludes: excludes.clone(),
                    site: site.clone(),
                    pre_hook: pre_hook.clone(),
                    post_hook: post_hook.clone(),
                    qemu: qemu.clone(),
                };
                Ok(vec![added.into()])
            }
            SourceCommand::Update { name, paths, excludes, site, pre_hook, post_hook, qemu } => {
                self.status.require_active(AggregateType::Source)?;
                let Some(kind) = self.kind else {
                    return Err(DomainError::NotFound { aggregate: AggregateType::Source });
                };
                let name = validate::name("name", name)?;
                Definition { kind, paths, excludes, site, pre_hook, post_hook, qemu }.check()?;
                let updated = SourceUpdated {
                    name,
                    paths: paths.clone(),
                    excludes: excludes.clone(),
                    site: site.clone(),
                    pre_hook: pre_hook.clone(),
                    post_hook: post_hook.clone(),
                    qemu: qemu.clone(),
                };
                if self.unchanged_by(&updated) {
                    return Ok(vec![]);
                }
                Ok(vec![updated.into()])
            }
            SourceCommand::Remove => {
                self.status.require_active(AggregateType::Source)?;
                Ok(vec![SourceRemoved {}.into()])
            }
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::SourceAdded(e) => {
                self.status = Lifecycle::Active;
                self.name.clone_from(&e.name);
                self.kind = Some(e.kind);
                self.host.clone_from(&e.host);
                self.paths.clone_from(&e.paths);
                self.excludes.clone_from(&e.excludes);
                self.site.clone_from(&e.site);
                self.pre_hook.clone_from(&e.pre_hook);
                self.post_hook.clone_from(&e.post_hook);
                self.qemu.clone_from(&e.qemu);
            }
            Event::SourceUpdated(e) => {
                self.name.clone_from(&e.name);
                self.paths.clone_from(&e.paths);
                self.excludes.clone_from(&e.excludes);
                self.site.clone_from(&e.site);
                self.pre_hook.clone_from(&e.pre_hook);
                self.post_hook.clone_from(&e.post_hook);
                self.qemu.clone_from(&e.qemu);
            }
            Event::SourceRemoved(_) => self.status = Lifecycle::Removed,
            _ => {}
        }
    }
}

impl Source {
    fn unchanged_by(&self, update: &SourceUpdated) -> bool {
        self.name == update.name
            && self.paths == update.paths
            && self.excludes == update.excludes
            && self.site == update.site
            && self.pre_hook == update.pre_hook
            && self.post_hook == update.post_hook
            && self.qemu == update.qemu
    }
}

/// The parts of a source that `Add` and `Update` share, to check together.
struct Definition<'a> {
    kind: SourceKind,
    paths: &'a [String],
    excludes: &'a [String],
    site: &'a Option<String>,
    pre_hook: &'a Option<String>,
    post_hook: &'a Option<String>,
    qemu: &'a Option<QemuDisk>,
}

impl Definition<'_> {
    fn check(&self) -> Result<(), DomainError> {
        self.check_paths()?;
        for exclude in self.excludes {
            validate::not_blank("excludes", exclude)?;
            validate::relative_free_path("excludes", exclude)?;
            validate::glob("excludes", exclude)?;
        }
        if let Some(site) = self.site {
            validate::site("site", site)?;
        }
        for (field, hook) in [("pre_hook", self.pre_hook), ("post_hook", self.post_hook)] {
            if let Some(hook) = hook {
                validate::not_blank(field, hook)?;
                if hook.contains('\0') {
                    return Err(DomainError::invalid(field, "must not contain NUL"));
                }
            }
        }
        if let Some(qemu) = self.qemu {
            if self.kind != SourceKind::Image {
                return Err(DomainError::invalid("qemu", "only an image source is tracked through qemu"));
            }
            validate::absolute_path("qemu.monitor", &qemu.monitor)?;
            if let Some(nbd) = &qemu.nbd {
                validate::absolute_path("qemu.nbd", nbd)?;
            }
            validate::not_blank("qemu.node", &qemu.node)?;
            if qemu.node.len() > 127 || !qemu.node.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(DomainError::invalid(
                    "qemu.node",
                    "a qemu node name: up to 127 letters, digits, -, _ and .",
                ));
            }
        }
        Ok(())
    }

    fn check_paths(&self) -> Result<(), DomainError> {
        const FIELD: &str = "paths";
        if self.paths.is_empty() {
            return Err(DomainError::invalid(FIELD, "must name at least one path"));
        }
        for (i, path) in self.paths.iter().enumerate() {
            if self.paths[..i].contains(path) {
                return Err(DomainError::invalid(FIELD, format!("`{path}` is given twice")));
            }
            match self.kind {
                SourceKind::Files | SourceKind::Image => validate::absolute_path(FIELD, path)?,
                SourceKind::Postgres => validate::database_name(FIELD, path)?,
            }
        }
        if self.kind == SourceKind::Image && self.paths.len() != 1 {
            return Err(DomainError::invalid(FIELD, "an image source reads exactly one disk image or block device"));
        }
        Ok(())
    }
}

fn check_host(host: &str) -> Result<(), DomainError> {
    validate::not_blank("host", host)?;
    if host.chars().count() > MAX_HOST_CHARS || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DomainError::invalid(
            "host",
            format!("must be a host name of at most {MAX_HOST_CHARS} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::AggregateTest;

    fn add(kind: SourceKind, paths: &[&str]) -> SourceCommand {
        SourceCommand::Add {
            name: "web".into(),
            kind,
            host: "web-1.acme.internal".into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            excludes: vec![],
            site: None,
            pre_hook: None,
            post_hook: None,
            qemu: None,
        }
    }

    /// A files source on `/srv`, with the given host, site and hooks.
    fn add_files(host: &str, site: Option<&str>, pre_hook: Option<&str>, post_hook: Option<&str>) -> SourceCommand {
        SourceCommand::Add {
            name: "web".into(),
            kind: SourceKind::Files,
            host: host.into(),
            paths: vec!["/srv".into()],
            excludes: vec![],
            site: site.map(String::from),
            pre_hook: pre_hook.map(String::from),
            post_hook: post_hook.map(String::from),
            qemu: None,
        }
    }

    fn added() -> Event {
        SourceAdded {
            name: "web".into(),
            kind: SourceKind::Files,
            host: "web-1".into(),
            paths: vec!["/srv/www".into()],
            excludes: vec!["*.tmp".into()],
            site: Some("berlin-dc".into()),
            pre_hook: None,
            post_hook: None,
            qemu: None,
        }
        .into()
    }

    fn update(paths: &[&str]) -> SourceCommand {
        SourceCommand::Update {
            name: "web".into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            excludes: vec!["*.tmp".into()],
            site: Some("berlin-dc".into()),
            pre_hook: None,
            post_hook: None,
            qemu: None,
        }
    }

    #[test]
    fn add_sources_of_each_kind() {
        for (kind, paths) in [
            (SourceKind::Files, &["/srv/www", "/etc"][..]),
            (SourceKind::Image, &["/dev/vg0/vm-101"][..]),
            (SourceKind::Postgres, &["app", "billing"][..]),
        ] {
            let events = AggregateTest::<Source>::given(vec![]).when(add(kind, paths)).result().unwrap();
            assert!(matches!(&events[..], [Event::SourceAdded(e)] if e.kind == kind && e.paths.len() == paths.len()));
        }
    }

    #[test]
    fn paths_must_fit_the_kind() {
        for (kind, paths) in [
            (SourceKind::Files, &[][..]),
            (SourceKind::Files, &["srv/www"][..]),
            (SourceKind::Files, &["/srv", "/srv"][..]),
            (SourceKind::Files, &["/srv/../etc"][..]),
            (SourceKind::Image, &["disk.img"][..]),
            (SourceKind::Image, &["/dev/sda", "/dev/sdb"][..]),
            (SourceKind::Image, &[][..]),
            (SourceKind::Postgres, &["/var/lib/postgresql"][..]),
            (SourceKind::Postgres, &[""][..]),
            (SourceKind::Postgres, &[][..]),
        ] {
            AggregateTest::<Source>::given(vec![]).when(add(kind, paths)).then_expect_invalid("paths");
        }
    }

    #[test]
    fn site_labels_are_subject_tokens() {
        for site in ["", "a.b", "a b", "*", &"x".repeat(33)] {
            AggregateTest::<Source>::given(vec![])
                .when(add_files("web-1", Some(site), None, None))
                .then_expect_invalid("site");
        }
        let state = AggregateTest::<Source>::given(vec![])
            .when(add_files("web-1", Some("berlin_dc-2"), Some("/usr/bin/quiesce"), Some("/usr/bin/thaw")))
            .then_expect_ok();
        assert_eq!(state.site.as_deref(), Some("berlin_dc-2"));
    }

    #[test]
    fn excludes_must_be_patterns_the_engine_can_use() {
        let with = |excludes: &[&str]| match add(SourceKind::Files, &["/srv"]) {
            SourceCommand::Add { name, kind, host, paths, site, pre_hook, post_hook, .. } => SourceCommand::Add {
                name,
                kind,
                host,
                paths,
                excludes: excludes.iter().map(|e| e.to_string()).collect(),
                site,
                pre_hook,
                post_hook,
                qemu: None,
            },
            _ => unreachable!(),
        };
        AggregateTest::<Source>::given(vec![])
            .when(with(&["*.tmp", "**/node_modules", "/home/*/.cache"]))
            .then_expect_ok();
        for bad in ["cache/[oops", "a{b", " ", "../up"] {
            AggregateTest::<Source>::given(vec![]).when(with(&[bad])).then_expect_invalid("excludes");
        }
    }

    #[test]
    fn only_an_image_source_is_tracked_through_qemu_by_absolute_sockets_and_a_node_name() {
        let tracked = |kind: SourceKind, monitor: &str, node: &str, nbd: Option<&str>| {
            let mut command = add(kind, &["/srv/vm/disk.raw"]);
            if let SourceCommand::Add { qemu, .. } = &mut command {
                *qemu = Some(QemuDisk { monitor: monitor.into(), node: node.into(), nbd: nbd.map(String::from) });
            }
            command
        };
        let state = AggregateTest::<Source>::given(vec![])
            .when(tracked(SourceKind::Image, "/run/vm/qmp.sock", "drive-virtio0", Some("/run/vm/nbd.sock")))
            .then_expect_ok();
        assert_eq!(state.qemu.map(|q| q.node).as_deref(), Some("drive-virtio0"));
        for (field, command) in [
            ("qemu", tracked(SourceKind::Files, "/run/vm/qmp.sock", "drive0", None)),
            ("qemu.monitor", tracked(SourceKind::Image, "qmp.sock", "drive0", None)),
            ("qemu.nbd", tracked(SourceKind::Image, "/run/vm/qmp.sock", "drive0", Some("nbd.sock"))),
            ("qemu.node", tracked(SourceKind::Image, "/run/vm/qmp.sock", " ", None)),
            ("qemu.node", tracked(SourceKind::Image, "/run/vm/qmp.sock", "drive 0", None)),
        ] {
            AggregateTest::<Source>::given(vec![]).when(command).then_expect_invalid(field);
        }
    }

    #[test]
    fn host_and_hooks_must_say_something() {
        for (field, command) in [
            ("host", add_files(" ", None, None, None)),
            ("host", add_files("web 1", None, None, None)),
            ("pre_hook", add_files("web-1", None, Some(""), None)),
            ("post_hook", add_files("web-1", None, None, Some("  "))),
        ] {
            AggregateTest::<Source>::given(vec![]).when(command).then_expect_invalid(field);
        }
    }

    #[test]
    fn update_checks_paths_against_the_existing_kind() {
        AggregateTest::<Source>::given(vec![added()]).when(update(&["database"])).then_expect_invalid("paths");
        let state = AggregateTest::<Source>::given(vec![added()])
            .when(update(&["/srv/www", "/home"]))
            .then_expect_events(vec![
                SourceUpdated {
                    name: "web".into(),
                    paths: vec!["/srv/www".into(), "/home".into()],
                    excludes: vec!["*.tmp".into()],
                    site: Some("berlin-dc".into()),
                    pre_hook: None,
                    post_hook: None,
                    qemu: None,
                }
                .into(),
            ]);
        assert_eq!(state.paths, ["/srv/www", "/home"]);
        assert_eq!(state.host, "web-1");
        AggregateTest::<Source>::given(vec![added()]).when(update(&["/srv/www"])).then_expect_events(vec![]);
    }

    #[test]
    fn missing_and_removed_sources_accept_nothing() {
        for command in [update(&["/srv"]), SourceCommand::Remove] {
            AggregateTest::<Source>::given(vec![])
                .when(command)
                .then_expect_error(DomainError::NotFound { aggregate: AggregateType::Source });
        }
        for command in [add(SourceKind::Files, &["/srv"]), update(&["/srv"]), SourceCommand::Remove] {
            AggregateTest::<Source>::given(vec![added(), SourceRemoved {}.into()])
                .when(command)
                .then_expect_error(DomainError::Removed { aggregate: AggregateType::Source });
        }
        AggregateTest::<Source>::given(vec![added()])
            .when(add(SourceKind::Files, &["/srv"]))
            .then_expect_error(DomainError::AlreadyExists { aggregate: AggregateType::Source });
    }
}
