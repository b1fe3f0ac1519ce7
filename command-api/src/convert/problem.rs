//! `annals.v1.ProblemCommands` requests -> [`ProblemCommand`]s. Field paths start with `problem.`.

use aggregates::problem::{
    AnalysisPlan, AnalysisResult, Artifact, ArtifactType, ClarifyingQuestion, DataRequirement,
    Deliverable, DeliverableType, ExpectedImpact, Feedback, Kpi, NodePriority, ProblemCommand,
    ProblemFrame, ProblemStage, Recommendation, RecommendationAction, Risk, Scope, SubmitProblem,
    TreeNode, Urgency,
};
use aggregates::values::{
    ArtifactId, Confidence, DeliverableId, Feasibility, FilePath, Impact, Level, MimeType, NodeId,
    OrganizationId, PlanId, ProblemId, ProblemTitle, Rating, RawText, RecommendationId,
    RecommendationPriority, ResultId, UserRef,
};
use schemas::v1 as pb;

use super::{
    at, check_len, enum_value, id, json_object, line, list, opt_bigint, opt_decimal,
    opt_enum_value, opt_id, opt_integer, opt_money, opt_text, opt_timestamp, required, text, texts,
    user_or,
};
use crate::error::ApiError;

fn problem_id(s: &str) -> Result<ProblemId, ApiError> {
    id("problem.problem_id", s, ProblemId::new)
}

fn level(v: pb::Level) -> Level {
    match v {
        pb::Level::Low | pb::Level::Unspecified => Level::Low,
        pb::Level::Medium => Level::Medium,
        pb::Level::High => Level::High,
    }
}

fn req_level(path: &str, v: i32) -> Result<Level, ApiError> {
    enum_value::<pb::Level>(path, v).map(level)
}

fn opt_level(path: &str, v: i32) -> Result<Option<Level>, ApiError> {
    Ok(opt_enum_value::<pb::Level>(path, v)?.map(level))
}

fn confidence(path: &str, s: Option<&String>) -> Result<Option<Confidence>, ApiError> {
    opt_decimal(path, s)?
        .map(|d| at(path, Confidence::new(d)))
        .transpose()
}

fn stage(path: &str, v: i32) -> Result<ProblemStage, ApiError> {
    use pb::ProblemStage as P;
    Ok(match enum_value::<P>(path, v)? {
        P::Unspecified | P::Created => ProblemStage::Created,
        P::Framing => ProblemStage::Framing,
        P::TreeGeneration => ProblemStage::TreeGeneration,
        P::Prioritizing => ProblemStage::Prioritizing,
        P::Planning => ProblemStage::Planning,
        P::Analyzing => ProblemStage::Analyzing,
        P::Synthesizing => ProblemStage::Synthesizing,
        P::Presenting => ProblemStage::Presenting,
        P::Completed => ProblemStage::Completed,
        P::Failed => ProblemStage::Failed,
        P::Cancelled => ProblemStage::Cancelled,
    })
}

/// `SubmitProblem`; the submitter defaults to the caller.
pub(crate) fn submit(
    r: &pb::SubmitProblemRequest,
    actor: &str,
) -> Result<ProblemCommand, ApiError> {
    let urgency = match opt_enum_value::<pb::Urgency>("problem.urgency", r.urgency)? {
        None | Some(pb::Urgency::Unspecified | pb::Urgency::Medium) => Urgency::Medium,
        Some(pb::Urgency::Low) => Urgency::Low,
        Some(pb::Urgency::High) => Urgency::High,
        Some(pb::Urgency::Critical) => Urgency::Critical,
    };
    Ok(ProblemCommand::SubmitProblem(SubmitProblem {
        problem_id: problem_id(&r.problem_id)?,
        raw_text: at("problem.raw_text", RawText::parse(&r.raw_text))?,
        title: r
            .title
            .as_ref()
            .map(|t| at("problem.title", ProblemTitle::parse(t)))
            .transpose()?,
        submitter: user_or("problem.submitter", &r.submitter, actor)?,
        urgency,
        metadata: json_object("problem.metadata", r.metadata.as_ref())?,
        organization_id: opt_id(
            "problem.organization_id",
            &r.organization_id,
            OrganizationId::new,
        )?,
    }))
}

/// `AdvanceStage`.
pub(crate) fn advance(r: &pb::AdvanceStageRequest) -> Result<ProblemCommand, ApiError> {
    Ok(ProblemCommand::AdvanceStage {
        problem_id: problem_id(&r.problem_id)?,
        to: stage("problem.to", r.to)?,
    })
}

/// `FailProblem`.
pub(crate) fn fail(r: &pb::FailProblemRequest) -> Result<ProblemCommand, ApiError> {
    Ok(ProblemCommand::FailProblem {
        problem_id: problem_id(&r.problem_id)?,
        reason: text("problem.reason", &r.reason)?,
    })
}

/// `CancelProblem`.
pub(crate) fn cancel(r: &pb::CancelProblemRequest) -> Result<ProblemCommand, ApiError> {
    Ok(ProblemCommand::CancelProblem {
        problem_id: problem_id(&r.problem_id)?,
        reason: text("problem.reason", &r.reason)?,
    })
}

/// `DefineFrame`.
pub(crate) fn define_frame(r: &pb::DefineFrameRequest) -> Result<ProblemCommand, ApiError> {
    let problem_id = problem_id(&r.problem_id)?;
    let f = required("problem.frame", r.frame.as_ref())?;
    let scope = f.scope.clone().unwrap_or_default();
    let frame = ProblemFrame {
        goal: text("problem.frame.goal", &f.goal)?,
        scope: Scope {
            include: texts("problem.frame.scope.include", &scope.include)?,
            exclude: texts("problem.frame.scope.exclude", &scope.exclude)?,
        },
        kpis: list("problem.frame.kpis", &f.kpis, |p, k: &pb::Kpi| {
            Ok(Kpi {
                name: line(&format!("{p}.name"), &k.name)?,
                baseline: opt_decimal(&format!("{p}.baseline"), k.baseline.as_ref())?,
                target: opt_decimal(&format!("{p}.target"), k.target.as_ref())?,
                window: opt_text(&format!("{p}.window"), k.window.as_ref())?,
                unit: opt_text(&format!("{p}.unit"), k.unit.as_ref())?,
            })
        })?,
        stakeholders: texts("problem.frame.stakeholders", &f.stakeholders)?,
        assumptions: texts("problem.frame.assumptions", &f.assumptions)?,
        constraints: texts("problem.frame.constraints", &f.constraints)?,
        confidence: req_level("problem.frame.confidence", f.confidence)?,
        clarifying_questions: list(
            "problem.frame.clarifying_questions",
            &f.clarifying_questions,
            |p, q: &pb::ClarifyingQuestion| {
                Ok(ClarifyingQuestion {
                    question: text(&format!("{p}.question"), &q.question)?,
                    category: opt_text(&format!("{p}.category"), q.category.as_ref())?,
                    required: q.required,
                    answer: opt_text(&format!("{p}.answer"), q.answer.as_ref())?,
                })
            },
        )?,
    };
    Ok(ProblemCommand::DefineFrame { problem_id, frame })
}

/// `AddTreeNode`.
pub(crate) fn add_tree_node(r: &pb::AddTreeNodeRequest) -> Result<ProblemCommand, ApiError> {
    let problem_id = problem_id(&r.problem_id)?;
    let n = required("problem.node", r.node.as_ref())?;
    Ok(ProblemCommand::AddTreeNode {
        problem_id,
        node: TreeNode {
            node_id: id("problem.node.node_id", &n.node_id, NodeId::new)?,
            parent_id: opt_id("problem.node.parent_id", &n.parent_id, NodeId::new)?,
            title: line("problem.node.title", &n.title)?,
            hypotheses: texts("problem.node.hypotheses", &n.hypotheses)?,
            required_data: texts("problem.node.required_data", &n.required_data)?,
            priority_hint: opt_level("problem.node.priority_hint", n.priority_hint)?,
            notes: opt_text("problem.node.notes", n.notes.as_ref())?,
        },
    })
}

fn small<T: TryFrom<u32>>(path: &str, v: u32) -> Result<T, ApiError> {
    T::try_from(v).map_err(|_| ApiError::invalid(path, format!("is out of range (got {v})")))
}

/// `PrioritizeNode`; the score is derived by the domain, never sent.
pub(crate) fn prioritize(r: &pb::PrioritizeNodeRequest) -> Result<ProblemCommand, ApiError> {
    let problem_id = problem_id(&r.problem_id)?;
    let p = required("problem.priority", r.priority.as_ref())?;
    Ok(ProblemCommand::PrioritizeNode {
        problem_id,
        priority: NodePriority {
            node_id: id("problem.priority.node_id", &p.node_id, NodeId::new)?,
            impact: at(
                "problem.priority.impact",
                Impact::new(small("problem.priority.impact", p.impact)?),
            )?,
            feasibility: at(
                "problem.priority.feasibility",
                Feasibility::new(small("problem.priority.feasibility", p.feasibility)?),
            )?,
            rationale: opt_text("problem.priority.rationale", p.rationale.as_ref())?,
            estimated_hours: opt_integer("problem.priority.estimated_hours", p.estimated_hours)?,
            estimated_cost: opt_money(
                "problem.priority.estimated_cost",
                p.estimated_cost.as_ref(),
            )?,
            confidence: confidence("problem.priority.confidence", p.confidence.as_ref())?,
            is_recommended: p.is_recommended,
        },
    })
}

fn opt_user(path: &str, s: Option<&String>) -> Result<Option<UserRef>, ApiError> {
    s.map(|s| at(path, UserRef::parse(s))).transpose()
}

/// `CreateAnalysisPlan`.
pub(crate) fn create_plan(r: &pb::CreateAnalysisPlanRequest) -> Result<ProblemCommand, ApiError> {
    let problem_id = problem_id(&r.problem_id)?;
    let p = required("problem.plan", r.plan.as_ref())?;
    Ok(ProblemCommand::CreateAnalysisPlan {
        problem_id,
        plan: AnalysisPlan {
            plan_id: id("problem.plan.plan_id", &p.plan_id, PlanId::new)?,
            question_id: id("problem.plan.question_id", &p.question_id, NodeId::new)?,
            title: at("problem.plan.title", ProblemTitle::parse(&p.title))?,
            methods: texts("problem.plan.methods", &p.methods)?,
            data_requirements: list(
                "problem.plan.data_requirements",
                &p.data_requirements,
                |path, d: &pb::DataRequirement| {
                    Ok(DataRequirement {
                        source: text(&format!("{path}.source"), &d.source)?,
                        table: opt_text(&format!("{path}.table"), d.table.as_ref())?,
                        columns: texts(&format!("{path}.columns"), &d.columns)?,
                        filters: opt_text(&format!("{path}.filters"), d.filters.as_ref())?,
                        sample_size: opt_bigint(&format!("{path}.sample_size"), d.sample_size)?,
                    })
                },
            )?,
            estimated_hours: opt_integer("problem.plan.estimated_hours", p.estimated_hours)?,
            owner: opt_user("problem.plan.owner", p.owner.as_ref())?,
            dependencies: texts("problem.plan.dependencies", &p.dependencies)?,
            acceptance_criteria: texts("problem.plan.acceptance_criteria", &p.acceptance_criteria)?,
        },
    })
}

fn artifact_type(path: &str, v: i32) -> Result<ArtifactType, ApiError> {
    use pb::ArtifactType as A;
    Ok(match enum_value::<A>(path, v)? {
        A::Unspecified | A::Chart => ArtifactType::Chart,
        A::Csv => ArtifactType::Csv,
        A::Notebook => ArtifactType::Notebook,
        A::Model => ArtifactType::Model,
        A::SqlQuery => ArtifactType::SqlQuery,
        A::Visualization => ArtifactType::Visualization,
    })
}

fn opt_mime(path: &str, s: Option<&String>) -> Result<Option<MimeType>, ApiError> {
    s.map(|s| at(path, MimeType::parse(s))).transpose()
}

/// `RecordAnalysisResult`.
pub(crate) fn record_result(
    r: &pb::RecordAnalysisResultRequest,
) -> Result<ProblemCommand, ApiError> {
    let problem_id = problem_id(&r.problem_id)?;
    let res = required("problem.result", r.result.as_ref())?;
    Ok(ProblemCommand::RecordAnalysisResult {
        problem_id,
        result: AnalysisResult {
            result_id: id("problem.result.result_id", &res.result_id, ResultId::new)?,
            plan_id: id("problem.result.plan_id", &res.plan_id, PlanId::new)?,
            summary: opt_text("problem.result.summary", res.summary.as_ref())?,
            key_findings: texts("problem.result.key_findings", &res.key_findings)?,
            metrics: json_object("problem.result.metrics", res.metrics.as_ref())?,
            confidence: confidence("problem.result.confidence", res.confidence.as_ref())?,
            execution_time_secs: opt_integer(
                "problem.result.execution_time_secs",
                res.execution_time_secs,
            )?,
            artifacts: list(
                "problem.result.artifacts",
                &res.artifacts,
                |p, a: &pb::Artifact| {
                    Ok(Artifact {
                        artifact_id: id(
                            &format!("{p}.artifact_id"),
                            &a.artifact_id,
                            ArtifactId::new,
                        )?,
                        artifact_type: artifact_type(
                            &format!("{p}.artifact_type"),
                            a.artifact_type,
                        )?,
                        file_path: at(&format!("{p}.file_path"), FilePath::parse(&a.file_path))?,
                        file_size: opt_bigint(&format!("{p}.file_size"), a.file_size)?,
                        mime_type: opt_mime(&format!("{p}.mime_type"), a.mime_type.as_ref())?,
                        description: opt_text(&format!("{p}.description"), a.description.as_ref())?,
                    })
                },
            )?,
        },
    })
}

/// `AddRecommendation`.
pub(crate) fn add_recommendation(
    r: &pb::AddRecommendationRequest,
) -> Result<ProblemCommand, ApiError> {
    let problem_id = problem_id(&r.problem_id)?;
    let rec = required("problem.recommendation", r.recommendation.as_ref())?;
    let p = "problem.recommendation";
    let expected_impact = rec
        .expected_impact
        .as_ref()
        .map(|e| {
            Ok::<_, ApiError>(ExpectedImpact {
                kpi: text(&format!("{p}.expected_impact.kpi"), &e.kpi)?,
                delta_percentage: opt_decimal(
                    &format!("{p}.expected_impact.delta_percentage"),
                    e.delta_percentage.as_ref(),
                )?,
                delta_absolute: opt_decimal(
                    &format!("{p}.expected_impact.delta_absolute"),
                    e.delta_absolute.as_ref(),
                )?,
                timeframe: opt_text(
                    &format!("{p}.expected_impact.timeframe"),
                    e.timeframe.as_ref(),
                )?,
            })
        })
        .transpose()?;
    Ok(ProblemCommand::AddRecommendation {
        problem_id,
        recommendation: Recommendation {
            recommendation_id: id(
                &format!("{p}.recommendation_id"),
                &rec.recommendation_id,
                RecommendationId::new,
            )?,
            title: at(&format!("{p}.title"), ProblemTitle::parse(&rec.title))?,
            summary: text(&format!("{p}.summary"), &rec.summary)?,
            evidence: texts(&format!("{p}.evidence"), &rec.evidence)?,
            actions: list(
                &format!("{p}.actions"),
                &rec.actions,
                |path, a: &pb::RecommendationAction| {
                    Ok(RecommendationAction {
                        step: text(&format!("{path}.step"), &a.step)?,
                        description: opt_text(
                            &format!("{path}.description"),
                            a.description.as_ref(),
                        )?,
                        owner: opt_user(&format!("{path}.owner"), a.owner.as_ref())?,
                        due_date: opt_timestamp(&format!("{path}.due_date"), a.due_date.as_ref())?,
                        success_criteria: opt_text(
                            &format!("{path}.success_criteria"),
                            a.success_criteria.as_ref(),
                        )?,
                    })
                },
            )?,
            expected_impact,
            risks: list(&format!("{p}.risks"), &rec.risks, |path, r: &pb::Risk| {
                Ok(Risk {
                    risk: text(&format!("{path}.risk"), &r.risk)?,
                    mitigation: opt_text(&format!("{path}.mitigation"), r.mitigation.as_ref())?,
                    probability: req_level(&format!("{path}.probability"), r.probability)?,
                    impact: req_level(&format!("{path}.impact"), r.impact)?,
                })
            })?,
            confidence: confidence(&format!("{p}.confidence"), rec.confidence.as_ref())?,
            priority: at(
                &format!("{p}.priority"),
                RecommendationPriority::new(small(&format!("{p}.priority"), rec.priority)?),
            )?,
        },
    })
}

fn deliverable_type(path: &str, v: i32) -> Result<DeliverableType, ApiError> {
    use pb::DeliverableType as D;
    Ok(match enum_value::<D>(path, v)? {
        D::Unspecified | D::Ppt => DeliverableType::Ppt,
        D::Pdf => DeliverableType::Pdf,
        D::Video => DeliverableType::Video,
        D::Audio => DeliverableType::Audio,
        D::ExecutiveSummary => DeliverableType::ExecutiveSummary,
    })
}

/// `AddDeliverable`.
pub(crate) fn add_deliverable(r: &pb::AddDeliverableRequest) -> Result<ProblemCommand, ApiError> {
    let problem_id = problem_id(&r.problem_id)?;
    let d = required("problem.deliverable", r.deliverable.as_ref())?;
    Ok(ProblemCommand::AddDeliverable {
        problem_id,
        deliverable: Deliverable {
            deliverable_id: id(
                "problem.deliverable.deliverable_id",
                &d.deliverable_id,
                DeliverableId::new,
            )?,
            deliverable_type: deliverable_type(
                "problem.deliverable.deliverable_type",
                d.deliverable_type,
            )?,
            file_path: at(
                "problem.deliverable.file_path",
                FilePath::parse(&d.file_path),
            )?,
            file_size: opt_bigint("problem.deliverable.file_size", d.file_size)?,
            mime_type: opt_mime("problem.deliverable.mime_type", d.mime_type.as_ref())?,
            expires_at: opt_timestamp("problem.deliverable.expires_at", d.expires_at.as_ref())?,
        },
    })
}

/// `MarkDeliverableReady`.
pub(crate) fn deliverable_ready(
    r: &pb::MarkDeliverableReadyRequest,
) -> Result<ProblemCommand, ApiError> {
    Ok(ProblemCommand::MarkDeliverableReady {
        problem_id: problem_id(&r.problem_id)?,
        deliverable_id: id(
            "problem.deliverable_id",
            &r.deliverable_id,
            DeliverableId::new,
        )?,
    })
}

/// `MarkDeliverableFailed`.
pub(crate) fn deliverable_failed(
    r: &pb::MarkDeliverableFailedRequest,
) -> Result<ProblemCommand, ApiError> {
    Ok(ProblemCommand::MarkDeliverableFailed {
        problem_id: problem_id(&r.problem_id)?,
        deliverable_id: id(
            "problem.deliverable_id",
            &r.deliverable_id,
            DeliverableId::new,
        )?,
        reason: text("problem.reason", &r.reason)?,
    })
}

/// `SubmitFeedback`; the user defaults to the caller.
pub(crate) fn feedback(
    r: &pb::SubmitFeedbackRequest,
    actor: &str,
) -> Result<ProblemCommand, ApiError> {
    let problem_id = problem_id(&r.problem_id)?;
    let f = required("problem.feedback", r.feedback.as_ref())?;
    check_len(
        "problem.feedback.improvement_suggestions",
        &f.improvement_suggestions,
        super::MAX_LIST_ITEMS,
    )?;
    Ok(ProblemCommand::SubmitFeedback {
        problem_id,
        feedback: Feedback {
            user: user_or("problem.feedback.user", &f.user, actor)?,
            rating: at(
                "problem.feedback.rating",
                Rating::new(small("problem.feedback.rating", f.rating)?),
            )?,
            text: opt_text("problem.feedback.text", f.text.as_ref())?,
            improvement_suggestions: texts(
                "problem.feedback.improvement_suggestions",
                &f.improvement_suggestions,
            )?,
            category: opt_text("problem.feedback.category", f.category.as_ref())?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_errors_carry_their_path() {
        let r = pb::DefineFrameRequest {
            envelope: None,
            problem_id: uuid::Uuid::now_v7().to_string(),
            frame: Some(pb::ProblemFrame {
                goal: "grow".into(),
                confidence: pb::Level::High as i32,
                kpis: vec![pb::Kpi {
                    name: "   ".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        };
        let e = define_frame(&r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "problem.frame.kpis[0].name: must not be empty"
        );
    }

    #[test]
    fn scores_are_range_checked() {
        let r = pb::PrioritizeNodeRequest {
            envelope: None,
            problem_id: uuid::Uuid::now_v7().to_string(),
            priority: Some(pb::NodePriority {
                node_id: uuid::Uuid::now_v7().to_string(),
                impact: 11,
                feasibility: 5,
                ..Default::default()
            }),
        };
        let e = prioritize(&r).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("problem.priority.impact: must be between 1 and 10")
        );
    }
}
