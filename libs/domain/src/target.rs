//! A target: where a repository lives (a folder, an S3 bucket, an Azure container).
//!
//! Its kind and location are fixed when it is added: moving a repository is a copy to a new
//! target, not an edit. Credentials are sealed elsewhere; the target holds only their
//! [`SecretRef`], and a location that carries credentials is refused.

use arca_events::{
    AggregateType, Event, SecretRef, TargetAdded, TargetKind, TargetRemoved, TargetSettings, TargetUpdated,
};

use crate::{Aggregate, Context, DomainError, Lifecycle, validate};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub status: Lifecycle,
    pub name: String,
    /// `None` until added.
    pub kind: Option<TargetKind>,
    pub location: String,
    pub settings: TargetSettings,
    pub credentials: Option<SecretRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetCommand {
    Add {
        name: String,
        kind: TargetKind,
        location: String,
        settings: TargetSettings,
        credentials: Option<SecretRef>,
    },
    /// Replaces the name, settings and credentials.
    Update {
        name: String,
        settings: TargetSettings,
        credentials: Option<SecretRef>,
    },
    Remove,
}

impl Aggregate for Target {
    const TYPE: AggregateType = AggregateType::Target;
    type Command = TargetCommand;

    fn handle(&self, command: &TargetCommand, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        ctx.tenant.require_exists()?;
        match command {
            TargetCommand::Add { name, kind, location, settings, credentials } => {
                self.status.require_missing(AggregateType::Target)?;
                let name = validate::name("name", name)?;
                validate::target_location(*kind, location)?;
                check_settings(*kind, settings, credentials)?;
                let added = TargetAdded {
                    name,
                    kind: *kind,
                    location: location.clone(),
                    settings: settings.clone(),
                    credentials: *credentials,
                };
                Ok(vec![added.into()])
            }
            TargetCommand::Update { name, settings, credentials } => {
                self.status.require_active(AggregateType::Target)?;
                let Some(kind) = self.kind else {
                    return Err(DomainError::NotFound { aggregate: AggregateType::Target });
                };
                let name = validate::name("name", name)?;
                check_settings(kind, settings, credentials)?;
                if name == self.name && *settings == self.settings && *credentials == self.credentials {
                    return Ok(vec![]);
                }
                Ok(vec![TargetUpdated { name, settings: settings.clone(), credentials: *credentials }.into()])
            }
            TargetCommand::Remove => {
                self.status.require_active(AggregateType::Target)?;
                Ok(vec![TargetRemoved {}.into()])
            }
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::TargetAdded(e) => {
                self.status = Lifecycle::Active;
                self.name.clone_from(&e.name);
                self.kind = Some(e.kind);
                self.location.clone_from(&e.location);
                self.settings.clone_from(&e.settings);
                self.credentials = e.credentials;
            }
            Event::TargetUpdated(e) => {
                self.name.clone_from(&e.name);
                self.settings.clone_from(&e.settings);
                self.credentials = e.credentials;
            }
            Event::TargetRemoved(_) => self.status = Lifecycle::Removed,
            _ => {}
        }
    }
}

fn check_settings(
    kind: TargetKind,
    settings: &TargetSettings,
    credentials: &Option<SecretRef>,
) -> Result<(), DomainError> {
    validate::target_settings(kind, settings)?;
    if kind == TargetKind::Fs && credentials.is_some() {
        return Err(DomainError::invalid("credentials", "an fs target takes no credentials"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use arca_events::SecretId;

    use super::*;
    use crate::testing::AggregateTest;

    fn settings(pairs: &[(&str, &str)]) -> TargetSettings {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn add(kind: TargetKind, location: &str, settings: TargetSettings) -> TargetCommand {
        TargetCommand::Add { name: "offsite".into(), kind, location: location.into(), settings, credentials: None }
    }

    fn s3_added() -> Event {
        TargetAdded {
            name: "offsite".into(),
            kind: TargetKind::S3,
            location: "s3://backups/acme".into(),
            settings: settings(&[("region", "eu-central-1")]),
            credentials: Some(SecretRef { id: SecretId::new() }),
        }
        .into()
    }

    #[test]
    fn add_a_target_of_each_kind() {
        for (kind, location, settings) in [
            (TargetKind::Fs, "fs:///srv/backups", settings(&[])),
            (
                TargetKind::S3,
                "s3://backups/acme",
                settings(&[("endpoint", "http://minio:9000"), ("region", "us-east-1")]),
            ),
            (TargetKind::Azblob, "azblob://backups/acme", settings(&[("account_name", "acmestore")])),
        ] {
            let state = AggregateTest::<Target>::given(vec![])
                .when(add(kind, location, settings.clone()))
                .then_expect_events(vec![
                    TargetAdded {
                        name: "offsite".into(),
                        kind,
                        location: location.into(),
                        settings: settings.clone(),
                        credentials: None,
                    }
                    .into(),
                ]);
            assert_eq!((state.status, state.kind), (Lifecycle::Active, Some(kind)));
        }
    }

    #[test]
    fn location_must_match_the_kind() {
        for (kind, location) in [
            (TargetKind::Fs, "s3://backups"),
            (TargetKind::Fs, "fs://relative/path"),
            (TargetKind::Fs, "fs:///srv/../etc"),
            (TargetKind::S3, "azblob://backups"),
            (TargetKind::S3, "s3://Backups"),
            (TargetKind::S3, "s3://ab"),
            (TargetKind::S3, "s3://AKIA:secret@backups"),
            (TargetKind::Azblob, "s3://backups"),
            (TargetKind::Azblob, "azblob://back_ups"),
            (TargetKind::Azblob, "azblob://backups/a/../../b"),
        ] {
            AggregateTest::<Target>::given(vec![])
                .when(add(kind, location, settings(&[])))
                .then_expect_invalid("location");
        }
    }

    #[test]
    fn settings_must_belong_to_the_kind() {
        for (kind, location, settings) in [
            (TargetKind::Fs, "fs:///srv/backups", settings(&[("region", "eu")])),
            (TargetKind::S3, "s3://backups", settings(&[("account_name", "acme")])),
            (TargetKind::S3, "s3://backups", settings(&[("endpoint", "minio:9000")])),
            (TargetKind::Azblob, "azblob://backups", settings(&[("region", "westeurope")])),
            (TargetKind::Azblob, "azblob://backups", settings(&[("endpoint", "tcp://x")])),
        ] {
            AggregateTest::<Target>::given(vec![]).when(add(kind, location, settings)).then_expect_invalid("settings");
        }
    }

    #[test]
    fn fs_targets_take_no_credentials() {
        AggregateTest::<Target>::given(vec![])
            .when(TargetCommand::Add {
                name: "local".into(),
                kind: TargetKind::Fs,
                location: "fs:///srv/backups".into(),
                settings: settings(&[]),
                credentials: Some(SecretRef { id: SecretId::new() }),
            })
            .then_expect_invalid("credentials");
    }

    #[test]
    fn add_twice_is_refused() {
        AggregateTest::<Target>::given(vec![s3_added()])
            .when(add(TargetKind::Fs, "fs:///srv", settings(&[])))
            .then_expect_error(DomainError::AlreadyExists { aggregate: AggregateType::Target });
    }

    #[test]
    fn update_checks_settings_against_the_existing_kind() {
        AggregateTest::<Target>::given(vec![s3_added()])
            .when(TargetCommand::Update {
                name: "offsite".into(),
                settings: settings(&[("account_name", "x")]),
                credentials: None,
            })
            .then_expect_invalid("settings");
        let new_settings = settings(&[("endpoint", "https://s3.example.com"), ("region", "eu-west-1")]);
        let state = AggregateTest::<Target>::given(vec![s3_added()])
            .when(TargetCommand::Update {
                name: " offsite 2 ".into(),
                settings: new_settings.clone(),
                credentials: None,
            })
            .then_expect_events(vec![
                TargetUpdated { name: "offsite 2".into(), settings: new_settings.clone(), credentials: None }.into(),
            ]);
        assert_eq!((state.name.as_str(), &state.settings, state.credentials), ("offsite 2", &new_settings, None));
        assert_eq!(state.location, "s3://backups/acme");
    }

    #[test]
    fn update_that_changes_nothing_produces_nothing() {
        let Event::TargetAdded(added) = s3_added() else { unreachable!() };
        AggregateTest::<Target>::given(vec![added.clone().into()])
            .when(TargetCommand::Update { name: added.name, settings: added.settings, credentials: added.credentials })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_missing_target_cannot_be_changed() {
        for command in [
            TargetCommand::Update { name: "x".into(), settings: settings(&[]), credentials: None },
            TargetCommand::Remove,
        ] {
            AggregateTest::<Target>::given(vec![])
                .when(command)
                .then_expect_error(DomainError::NotFound { aggregate: AggregateType::Target });
        }
    }

    #[test]
    fn a_removed_target_accepts_nothing() {
        let removed = || vec![s3_added(), TargetRemoved {}.into()];
        for command in [
            add(TargetKind::S3, "s3://backups", settings(&[])),
            TargetCommand::Update { name: "x".into(), settings: settings(&[]), credentials: None },
            TargetCommand::Remove,
        ] {
            AggregateTest::<Target>::given(removed())
                .when(command)
                .then_expect_error(DomainError::Removed { aggregate: AggregateType::Target });
        }
    }
}
