//! The problem aggregate (seed 000): a business problem moving through the analysis pipeline.
//!
//! Stages: `created -> framing -> tree_generation -> prioritizing -> planning -> analyzing ->
//! synthesizing -> presenting -> completed`, one step at a time via
//! [`ProblemCommand::AdvanceStage`] (naming the target, so a retried advance fails instead of
//! skipping a stage); `failed`/`cancelled` from any non-terminal stage. Each stage's work is
//! only accepted in that stage, and a stage can only be left once its work exists:
//!
//! | command | allowed in stage | events |
//! |---|---|---|
//! | [`ProblemCommand::SubmitProblem`] | problem does not exist | `problem.submitted` |
//! | [`ProblemCommand::AdvanceStage`] | any non-terminal, target = next stage, and the entry rule below holds | `problem.stage_advanced` |
//! | [`ProblemCommand::FailProblem`] | any non-terminal | `problem.failed` |
//! | [`ProblemCommand::CancelProblem`] | any non-terminal | `problem.cancelled` |
//! | [`ProblemCommand::DefineFrame`] | `framing` (redefining replaces: one frame per problem; the same frame again writes nothing) | `problem.frame_defined` |
//! | [`ProblemCommand::AddTreeNode`] | `tree_generation`; one root (no parent); a parent must exist; level = parent level + 1 | `problem.tree_node_added` |
//! | [`ProblemCommand::PrioritizeNode`] | `prioritizing`; node exists (re-prioritising replaces; the same input again writes nothing) | `problem.node_prioritized` |
//! | [`ProblemCommand::CreateAnalysisPlan`] | `planning`; question node exists | `problem.analysis_plan_created` |
//! | [`ProblemCommand::RecordAnalysisResult`] | `analyzing`; plan exists and has no result yet | `problem.analysis_result_recorded` |
//! | [`ProblemCommand::AddRecommendation`] | `synthesizing` | `problem.recommendation_added` |
//! | [`ProblemCommand::AddDeliverable`] | `presenting` | `problem.deliverable_added` |
//! | [`ProblemCommand::MarkDeliverableReady`] | `presenting`; deliverable `generating` | `problem.deliverable_ready` |
//! | [`ProblemCommand::MarkDeliverableFailed`] | `presenting`; deliverable `generating` | `problem.deliverable_failed` |
//! | [`ProblemCommand::SubmitFeedback`] | `presenting` or `completed`; one per user | `problem.feedback_submitted` |
//!
//! Entry rules for advancing into a stage: `tree_generation` needs a frame, `prioritizing` a
//! tree node, `planning` a prioritised node, `analyzing` a plan, `synthesizing` a result,
//! `presenting` a recommendation, `completed` a ready deliverable.
//!
//! Every event type is at schema version 1. The priority score is derived, never supplied:
//! `impact × feasibility / 10`, two decimals (0.10–10.00), so every replay computes the same.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::error::DomainError;
use crate::event::domain_events;
use crate::values::{
    ArtifactId, Confidence, DeliverableId, Feasibility, FilePath, Impact, JsonObject, Level,
    MimeType, NodeId, OrganizationId, PlanId, ProblemId, ProblemTitle, Rating, RawText,
    RecommendationId, RecommendationPriority, ResultId, Text, UserRef, check_len, string_enum,
};
use crate::{Aggregate, CommandContext};

/// Largest list accepted in one command field (items of a frame, findings, artifacts, …).
pub const MAX_LIST_ITEMS: usize = 100;

string_enum!(
    /// Urgency of a problem.
    Urgency, "urgency", "problem.invalid_urgency" {
        /// Low.
        Low = "low",
        /// Medium (the seed's default).
        Medium = "medium",
        /// High.
        High = "high",
        /// Critical.
        Critical = "critical",
    }
);

string_enum!(
    /// Pipeline stage of a problem (seed `status`).
    ProblemStage, "stage", "problem.invalid_stage" {
        /// Submitted.
        Created = "created",
        /// Defining the frame.
        Framing = "framing",
        /// Building the issue tree.
        TreeGeneration = "tree_generation",
        /// Scoring tree nodes.
        Prioritizing = "prioritizing",
        /// Planning analyses.
        Planning = "planning",
        /// Running analyses.
        Analyzing = "analyzing",
        /// Writing recommendations.
        Synthesizing = "synthesizing",
        /// Producing deliverables.
        Presenting = "presenting",
        /// Done (terminal).
        Completed = "completed",
        /// Failed (terminal).
        Failed = "failed",
        /// Cancelled (terminal).
        Cancelled = "cancelled",
    }
);

impl ProblemStage {
    /// The stage after this one in the pipeline; `None` for terminal stages.
    pub fn next(self) -> Option<ProblemStage> {
        use ProblemStage as S;
        Some(match self {
            S::Created => S::Framing,
            S::Framing => S::TreeGeneration,
            S::TreeGeneration => S::Prioritizing,
            S::Prioritizing => S::Planning,
            S::Planning => S::Analyzing,
            S::Analyzing => S::Synthesizing,
            S::Synthesizing => S::Presenting,
            S::Presenting => S::Completed,
            S::Completed | S::Failed | S::Cancelled => return None,
        })
    }

    /// `completed`, `failed` or `cancelled`.
    pub fn is_terminal(self) -> bool {
        self.next().is_none()
    }
}

string_enum!(
    /// Kind of analysis artifact.
    ArtifactType, "artifact_type", "problem.invalid_artifact_type" {
        /// Chart.
        Chart = "chart",
        /// CSV file.
        Csv = "csv",
        /// Notebook.
        Notebook = "notebook",
        /// Model.
        Model = "model",
        /// SQL query.
        SqlQuery = "sql_query",
        /// Visualization.
        Visualization = "visualization",
    }
);

string_enum!(
    /// Kind of deliverable.
    DeliverableType, "deliverable_type", "problem.invalid_deliverable_type" {
        /// Slides.
        Ppt = "ppt",
        /// PDF.
        Pdf = "pdf",
        /// Video.
        Video = "video",
        /// Audio.
        Audio = "audio",
        /// Executive summary.
        ExecutiveSummary = "executive_summary",
    }
);

string_enum!(
    /// Generation status of a deliverable.
    DeliverableStatus, "deliverable_status", "problem.invalid_deliverable_status" {
        /// Being produced.
        Generating = "generating",
        /// Available.
        Ready = "ready",
        /// Production failed.
        Failed = "failed",
        /// No longer available.
        Expired = "expired",
    }
);

// ---------------------------------------------------------------------------------------------
// Value structures carried by commands and events

/// Scope of a frame.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Scope {
    /// In scope.
    pub include: Vec<Text>,
    /// Out of scope.
    pub exclude: Vec<Text>,
}

/// A key performance indicator of a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kpi {
    /// Name.
    pub name: Text,
    /// Current value.
    pub baseline: Option<Decimal>,
    /// Target value.
    pub target: Option<Decimal>,
    /// Measurement window.
    pub window: Option<Text>,
    /// Unit.
    pub unit: Option<Text>,
}

/// A clarifying question of a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClarifyingQuestion {
    /// The question.
    pub question: Text,
    /// Category.
    pub category: Option<Text>,
    /// Must it be answered?
    pub required: bool,
    /// The answer, once known.
    pub answer: Option<Text>,
}

/// The structured definition of a problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemFrame {
    /// Goal.
    pub goal: Text,
    /// Scope.
    pub scope: Scope,
    /// KPIs.
    pub kpis: Vec<Kpi>,
    /// Stakeholders.
    pub stakeholders: Vec<Text>,
    /// Assumptions.
    pub assumptions: Vec<Text>,
    /// Constraints.
    pub constraints: Vec<Text>,
    /// Confidence in the frame (low/medium/high per the seed).
    pub confidence: Level,
    /// Clarifying questions.
    pub clarifying_questions: Vec<ClarifyingQuestion>,
}

/// An issue-tree node as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeNode {
    /// Node id.
    pub node_id: NodeId,
    /// Parent node; `None` for the root.
    pub parent_id: Option<NodeId>,
    /// Title.
    pub title: Text,
    /// Hypotheses.
    pub hypotheses: Vec<Text>,
    /// Required data.
    pub required_data: Vec<Text>,
    /// Priority hint.
    pub priority_hint: Option<Level>,
    /// Notes.
    pub notes: Option<Text>,
}

/// A node's prioritisation input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePriority {
    /// Node id.
    pub node_id: NodeId,
    /// Impact 1–10.
    pub impact: Impact,
    /// Feasibility 1–10.
    pub feasibility: Feasibility,
    /// Rationale.
    pub rationale: Option<Text>,
    /// Estimated hours.
    pub estimated_hours: Option<u32>,
    /// Estimated cost.
    pub estimated_cost: Option<crate::values::Money>,
    /// Confidence 0–1.
    pub confidence: Option<Confidence>,
    /// Recommended for analysis.
    pub is_recommended: bool,
}

impl NodePriority {
    /// `impact × feasibility / 10`, two decimals (see the module docs).
    pub fn score(&self) -> Decimal {
        (Decimal::from(self.impact.get()) * Decimal::from(self.feasibility.get()) / Decimal::TEN)
            .round_dp(2)
    }
}

/// A data requirement of an analysis plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRequirement {
    /// Source system.
    pub source: Text,
    /// Table.
    pub table: Option<Text>,
    /// Columns.
    pub columns: Vec<Text>,
    /// Filters.
    pub filters: Option<Text>,
    /// Sample size.
    pub sample_size: Option<u64>,
}

/// An analysis plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisPlan {
    /// Plan id.
    pub plan_id: PlanId,
    /// The issue-tree node (question) it answers.
    pub question_id: NodeId,
    /// Title.
    pub title: ProblemTitle,
    /// Methods (cohort, regression, …).
    pub methods: Vec<Text>,
    /// Data requirements.
    pub data_requirements: Vec<DataRequirement>,
    /// Estimated hours.
    pub estimated_hours: Option<u32>,
    /// Owner.
    pub owner: Option<UserRef>,
    /// Dependencies.
    pub dependencies: Vec<Text>,
    /// Acceptance criteria.
    pub acceptance_criteria: Vec<Text>,
}

/// A produced analysis artifact (stored elsewhere; referenced by path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// Artifact id.
    pub artifact_id: ArtifactId,
    /// Kind.
    pub artifact_type: ArtifactType,
    /// Location.
    pub file_path: FilePath,
    /// Size in bytes.
    pub file_size: Option<u64>,
    /// MIME type.
    pub mime_type: Option<MimeType>,
    /// Description.
    pub description: Option<Text>,
}

/// The result of an analysis plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisResult {
    /// Result id.
    pub result_id: ResultId,
    /// The plan it belongs to.
    pub plan_id: PlanId,
    /// Summary.
    pub summary: Option<Text>,
    /// Key findings.
    pub key_findings: Vec<Text>,
    /// Metrics.
    pub metrics: JsonObject,
    /// Confidence 0–1.
    pub confidence: Option<Confidence>,
    /// Execution time in seconds.
    pub execution_time_secs: Option<u32>,
    /// Artifacts.
    pub artifacts: Vec<Artifact>,
}

/// One action of a recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendationAction {
    /// Step.
    pub step: Text,
    /// Description.
    pub description: Option<Text>,
    /// Owner.
    pub owner: Option<UserRef>,
    /// Due date.
    pub due_date: Option<DateTime<Utc>>,
    /// Success criteria.
    pub success_criteria: Option<Text>,
}

/// Expected impact of a recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpectedImpact {
    /// KPI affected.
    pub kpi: Text,
    /// Relative change in percent.
    pub delta_percentage: Option<Decimal>,
    /// Absolute change.
    pub delta_absolute: Option<Decimal>,
    /// Timeframe.
    pub timeframe: Option<Text>,
}

/// A risk of a recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Risk {
    /// The risk.
    pub risk: Text,
    /// Mitigation.
    pub mitigation: Option<Text>,
    /// Probability.
    pub probability: Level,
    /// Impact.
    pub impact: Level,
}

/// A recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Recommendation id.
    pub recommendation_id: RecommendationId,
    /// Title.
    pub title: ProblemTitle,
    /// Summary.
    pub summary: Text,
    /// Evidence.
    pub evidence: Vec<Text>,
    /// Actions.
    pub actions: Vec<RecommendationAction>,
    /// Expected impact.
    pub expected_impact: Option<ExpectedImpact>,
    /// Risks.
    pub risks: Vec<Risk>,
    /// Confidence 0–1.
    pub confidence: Option<Confidence>,
    /// Priority 1–3.
    pub priority: RecommendationPriority,
}

/// A deliverable being produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deliverable {
    /// Deliverable id.
    pub deliverable_id: DeliverableId,
    /// Kind.
    pub deliverable_type: DeliverableType,
    /// Location.
    pub file_path: FilePath,
    /// Size in bytes.
    pub file_size: Option<u64>,
    /// MIME type.
    pub mime_type: Option<MimeType>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Feedback of one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// The user giving feedback.
    pub user: UserRef,
    /// Rating 1–5.
    pub rating: Rating,
    /// Free text.
    pub text: Option<Text>,
    /// Suggestions.
    pub improvement_suggestions: Vec<Text>,
    /// Category.
    pub category: Option<Text>,
}

// ---------------------------------------------------------------------------------------------
// Commands

/// Commands of the problem aggregate (see the module table for the allowed stages).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ProblemCommand {
    /// Submit a new problem (the client chooses the id).
    SubmitProblem(SubmitProblem),
    /// Move to the next stage.
    AdvanceStage {
        /// Target problem.
        problem_id: ProblemId,
        /// Must be the stage after the current one.
        to: ProblemStage,
    },
    /// Mark the problem failed.
    FailProblem {
        /// Target problem.
        problem_id: ProblemId,
        /// Why.
        reason: Text,
    },
    /// Cancel the problem.
    CancelProblem {
        /// Target problem.
        problem_id: ProblemId,
        /// Why.
        reason: Text,
    },
    /// Define (or redefine) the frame.
    DefineFrame {
        /// Target problem.
        problem_id: ProblemId,
        /// The frame.
        frame: ProblemFrame,
    },
    /// Add an issue-tree node.
    AddTreeNode {
        /// Target problem.
        problem_id: ProblemId,
        /// The node.
        node: TreeNode,
    },
    /// Score a node.
    PrioritizeNode {
        /// Target problem.
        problem_id: ProblemId,
        /// The scores.
        priority: NodePriority,
    },
    /// Create an analysis plan.
    CreateAnalysisPlan {
        /// Target problem.
        problem_id: ProblemId,
        /// The plan.
        plan: AnalysisPlan,
    },
    /// Record the result of a plan.
    RecordAnalysisResult {
        /// Target problem.
        problem_id: ProblemId,
        /// The result.
        result: AnalysisResult,
    },
    /// Add a recommendation.
    AddRecommendation {
        /// Target problem.
        problem_id: ProblemId,
        /// The recommendation.
        recommendation: Recommendation,
    },
    /// Start producing a deliverable.
    AddDeliverable {
        /// Target problem.
        problem_id: ProblemId,
        /// The deliverable.
        deliverable: Deliverable,
    },
    /// A deliverable finished generating.
    MarkDeliverableReady {
        /// Target problem.
        problem_id: ProblemId,
        /// The deliverable.
        deliverable_id: DeliverableId,
    },
    /// A deliverable failed to generate.
    MarkDeliverableFailed {
        /// Target problem.
        problem_id: ProblemId,
        /// The deliverable.
        deliverable_id: DeliverableId,
        /// Why.
        reason: Text,
    },
    /// Submit a user's feedback.
    SubmitFeedback {
        /// Target problem.
        problem_id: ProblemId,
        /// The feedback.
        feedback: Feedback,
    },
}

impl ProblemCommand {
    /// The stream the command addresses.
    pub fn problem_id(&self) -> ProblemId {
        use ProblemCommand as C;
        match self {
            C::SubmitProblem(s) => s.problem_id,
            C::AdvanceStage { problem_id, .. }
            | C::FailProblem { problem_id, .. }
            | C::CancelProblem { problem_id, .. }
            | C::DefineFrame { problem_id, .. }
            | C::AddTreeNode { problem_id, .. }
            | C::PrioritizeNode { problem_id, .. }
            | C::CreateAnalysisPlan { problem_id, .. }
            | C::RecordAnalysisResult { problem_id, .. }
            | C::AddRecommendation { problem_id, .. }
            | C::AddDeliverable { problem_id, .. }
            | C::MarkDeliverableReady { problem_id, .. }
            | C::MarkDeliverableFailed { problem_id, .. }
            | C::SubmitFeedback { problem_id, .. } => *problem_id,
        }
    }
}

/// Payload of [`ProblemCommand::SubmitProblem`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitProblem {
    /// New problem's id.
    pub problem_id: ProblemId,
    /// The problem statement.
    pub raw_text: RawText,
    /// Optional title.
    pub title: Option<ProblemTitle>,
    /// Who submitted it.
    pub submitter: UserRef,
    /// Urgency.
    pub urgency: Urgency,
    /// Free-form metadata.
    pub metadata: JsonObject,
    /// Owning organization.
    pub organization_id: Option<OrganizationId>,
}

// ---------------------------------------------------------------------------------------------
// Events

domain_events! {
    /// Events of the problem aggregate (all schema version 1).
    pub enum ProblemEvent {
        /// A problem was submitted (`created`).
        Submitted(ProblemSubmitted) => "problem.submitted" v 1,
        /// The problem moved to the next stage.
        StageAdvanced(StageAdvanced) => "problem.stage_advanced" v 1,
        /// The problem failed.
        Failed(ProblemEnded) => "problem.failed" v 1,
        /// The problem was cancelled.
        Cancelled(ProblemEnded) => "problem.cancelled" v 1,
        /// The frame was defined (replacing any earlier one).
        FrameDefined(FrameDefined) => "problem.frame_defined" v 1,
        /// An issue-tree node was added.
        TreeNodeAdded(TreeNodeAdded) => "problem.tree_node_added" v 1,
        /// A node was prioritised (replacing any earlier scores).
        NodePrioritized(NodePrioritized) => "problem.node_prioritized" v 1,
        /// An analysis plan was created.
        AnalysisPlanCreated(AnalysisPlanCreated) => "problem.analysis_plan_created" v 1,
        /// An analysis result was recorded.
        AnalysisResultRecorded(AnalysisResultRecorded) => "problem.analysis_result_recorded" v 1,
        /// A recommendation was added.
        RecommendationAdded(RecommendationAdded) => "problem.recommendation_added" v 1,
        /// A deliverable started generating.
        DeliverableAdded(DeliverableAdded) => "problem.deliverable_added" v 1,
        /// A deliverable is ready.
        DeliverableReady(DeliverableStatusChanged) => "problem.deliverable_ready" v 1,
        /// A deliverable failed.
        DeliverableFailed(DeliverableStatusChanged) => "problem.deliverable_failed" v 1,
        /// A user gave feedback.
        FeedbackSubmitted(FeedbackSubmitted) => "problem.feedback_submitted" v 1,
    }
}

/// Payload of `problem.submitted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemSubmitted {
    /// The submission.
    pub problem: SubmitProblem,
    /// Who issued the command.
    pub created_by: String,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `problem.stage_advanced`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageAdvanced {
    /// Problem id.
    pub problem_id: ProblemId,
    /// Previous stage.
    pub from: ProblemStage,
    /// New stage.
    pub to: ProblemStage,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `problem.failed` and `problem.cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemEnded {
    /// Problem id.
    pub problem_id: ProblemId,
    /// Stage it was in.
    pub from: ProblemStage,
    /// Why.
    pub reason: Text,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `problem.frame_defined`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameDefined {
    /// Problem id.
    pub problem_id: ProblemId,
    /// The frame.
    pub frame: ProblemFrame,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `problem.tree_node_added`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeNodeAdded {
    /// Problem id.
    pub problem_id: ProblemId,
    /// The node.
    pub node: TreeNode,
    /// Depth derived from the parent (root = 0).
    pub level: u32,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `problem.node_prioritized`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePrioritized {
    /// Problem id.
    pub problem_id: ProblemId,
    /// The scores.
    pub priority: NodePriority,
    /// Derived score ([`NodePriority::score`]), stored for read models.
    pub priority_score: Decimal,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `problem.analysis_plan_created`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisPlanCreated {
    /// Problem id.
    pub problem_id: ProblemId,
    /// The plan.
    pub plan: AnalysisPlan,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `problem.analysis_result_recorded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisResultRecorded {
    /// Problem id.
    pub problem_id: ProblemId,
    /// The result.
    pub result: AnalysisResult,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `problem.recommendation_added`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendationAdded {
    /// Problem id.
    pub problem_id: ProblemId,
    /// The recommendation.
    pub recommendation: Recommendation,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `problem.deliverable_added`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliverableAdded {
    /// Problem id.
    pub problem_id: ProblemId,
    /// The deliverable (status `generating`).
    pub deliverable: Deliverable,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `problem.deliverable_ready` and `problem.deliverable_failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliverableStatusChanged {
    /// Problem id.
    pub problem_id: ProblemId,
    /// Deliverable id.
    pub deliverable_id: DeliverableId,
    /// Failure reason (for `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Text>,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `problem.feedback_submitted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackSubmitted {
    /// Problem id.
    pub problem_id: ProblemId,
    /// The feedback.
    pub feedback: Feedback,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

// ---------------------------------------------------------------------------------------------
// State

/// Position of a node in the issue tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo {
    /// Parent node.
    pub parent_id: Option<NodeId>,
    /// Depth (root = 0).
    pub level: u32,
}

/// A problem as folded from events (only what decisions need plus headline fields).
#[derive(Debug, Clone, PartialEq)]
pub struct ProblemData {
    /// Problem id.
    pub id: ProblemId,
    /// Title.
    pub title: Option<ProblemTitle>,
    /// Submitter.
    pub submitter: UserRef,
    /// Urgency.
    pub urgency: Urgency,
    /// Owning organization.
    pub organization_id: Option<OrganizationId>,
    /// Current stage.
    pub stage: ProblemStage,
    /// The frame, once defined.
    pub frame: Option<ProblemFrame>,
    /// Issue-tree nodes.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Derived priority score per prioritised node.
    pub priorities: BTreeMap<NodeId, Decimal>,
    /// The last prioritisation input per node, so that re-sending it unchanged writes nothing.
    pub priority_inputs: BTreeMap<NodeId, NodePriority>,
    /// Plans and, once recorded, their result.
    pub plans: BTreeMap<PlanId, Option<ResultId>>,
    /// Recommendations.
    pub recommendations: BTreeSet<RecommendationId>,
    /// Deliverables and their status.
    pub deliverables: BTreeMap<DeliverableId, DeliverableStatus>,
    /// Users who gave feedback.
    pub feedback_by: BTreeSet<UserRef>,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it reached `completed`.
    pub completed_at: Option<DateTime<Utc>>,
}

impl ProblemData {
    fn results(&self) -> impl Iterator<Item = &ResultId> {
        self.plans.values().flatten()
    }
}

/// State of a problem stream: `None` until `problem.submitted`.
pub type ProblemState = Option<ProblemData>;

/// The problem aggregate.
#[derive(Debug, Clone, Copy)]
pub enum Problem {}

impl Aggregate for Problem {
    const STREAM_TYPE: &'static str = "problem";
    type State = ProblemState;
    type Command = ProblemCommand;
    type Event = ProblemEvent;

    fn decide(
        state: &ProblemState,
        command: ProblemCommand,
        ctx: &CommandContext,
    ) -> Result<Vec<ProblemEvent>, DomainError> {
        use ProblemCommand as C;
        use ProblemStage as S;
        let at = ctx.now;
        if let C::SubmitProblem(submit) = command {
            if state.is_some() {
                return Err(already_exists(submit.problem_id));
            }
            return Ok(vec![ProblemEvent::Submitted(ProblemSubmitted {
                problem: submit,
                created_by: ctx.actor.clone(),
                at,
            })]);
        }
        let p = match state {
            None => return Err(not_found(command.problem_id())),
            Some(p) if p.id != command.problem_id() => {
                return Err(DomainError::precondition(
                    "problem.stream_mismatch",
                    format!(
                        "command for problem {} was decided against problem {}",
                        command.problem_id(),
                        p.id
                    ),
                ));
            }
            Some(p) => p,
        };
        let problem_id = p.id;
        let event = match command {
            // Handled above; kept so the match stays exhaustive without a wildcard.
            C::SubmitProblem(_) => return Err(already_exists(problem_id)),
            C::AdvanceStage { to, .. } => {
                let Some(next) = p.stage.next() else {
                    return Err(terminal(p));
                };
                if to != next {
                    return Err(DomainError::precondition(
                        "problem.invalid_stage_transition",
                        format!(
                            "a problem in {} can only advance to {next}, not {to}",
                            p.stage
                        ),
                    ));
                }
                check_entry(p, to)?;
                ProblemEvent::StageAdvanced(StageAdvanced {
                    problem_id,
                    from: p.stage,
                    to,
                    at,
                })
            }
            C::FailProblem { reason, .. } => ProblemEvent::Failed(end(p, reason, at)?),
            C::CancelProblem { reason, .. } => ProblemEvent::Cancelled(end(p, reason, at)?),
            C::DefineFrame { frame, .. } => {
                require_stage(p, S::Framing, "define the frame")?;
                check_frame(&frame)?;
                // Redefining the frame as it already is changes nothing and writes nothing
                // (like an update that changes nothing; the API answers the current version).
                if p.frame.as_ref() == Some(&frame) {
                    return Ok(Vec::new());
                }
                ProblemEvent::FrameDefined(FrameDefined {
                    problem_id,
                    frame,
                    at,
                })
            }
            C::AddTreeNode { node, .. } => {
                require_stage(p, S::TreeGeneration, "add tree nodes")?;
                check_len("hypotheses", &node.hypotheses, MAX_LIST_ITEMS)?;
                check_len("required_data", &node.required_data, MAX_LIST_ITEMS)?;
                if p.nodes.contains_key(&node.node_id) {
                    return Err(DomainError::already_exists(
                        "problem.node_already_exists",
                        format!("tree node {} already exists", node.node_id),
                    ));
                }
                let level = match node.parent_id {
                    None if p.nodes.is_empty() => 0,
                    None => {
                        return Err(DomainError::precondition(
                            "problem.root_exists",
                            "the issue tree already has a root; give the node a parent",
                        ));
                    }
                    Some(parent) => {
                        let info = p.nodes.get(&parent).ok_or_else(|| {
                            DomainError::not_found(
                                "problem.parent_node_not_found",
                                format!("parent node {parent} does not exist"),
                            )
                        })?;
                        info.level + 1
                    }
                };
                ProblemEvent::TreeNodeAdded(TreeNodeAdded {
                    problem_id,
                    node,
                    level,
                    at,
                })
            }
            C::PrioritizeNode { priority, .. } => {
                require_stage(p, S::Prioritizing, "prioritize nodes")?;
                require_node(p, priority.node_id)?;
                if p.priority_inputs.get(&priority.node_id) == Some(&priority) {
                    return Ok(Vec::new());
                }
                ProblemEvent::NodePrioritized(NodePrioritized {
                    problem_id,
                    priority_score: priority.score(),
                    priority,
                    at,
                })
            }
            C::CreateAnalysisPlan { plan, .. } => {
                require_stage(p, S::Planning, "create analysis plans")?;
                require_node(p, plan.question_id)?;
                for (field, items) in [
                    ("methods", &plan.methods),
                    ("dependencies", &plan.dependencies),
                    ("acceptance_criteria", &plan.acceptance_criteria),
                ] {
                    check_len(field, items, MAX_LIST_ITEMS)?;
                }
                check_len("data_requirements", &plan.data_requirements, MAX_LIST_ITEMS)?;
                if p.plans.contains_key(&plan.plan_id) {
                    return Err(DomainError::already_exists(
                        "problem.plan_already_exists",
                        format!("analysis plan {} already exists", plan.plan_id),
                    ));
                }
                ProblemEvent::AnalysisPlanCreated(AnalysisPlanCreated {
                    problem_id,
                    plan,
                    at,
                })
            }
            C::RecordAnalysisResult { result, .. } => {
                require_stage(p, S::Analyzing, "record analysis results")?;
                check_len("key_findings", &result.key_findings, MAX_LIST_ITEMS)?;
                check_len("artifacts", &result.artifacts, MAX_LIST_ITEMS)?;
                let existing = p.plans.get(&result.plan_id).ok_or_else(|| {
                    DomainError::not_found(
                        "problem.plan_not_found",
                        format!("analysis plan {} does not exist", result.plan_id),
                    )
                })?;
                if existing.is_some() || p.results().any(|r| *r == result.result_id) {
                    return Err(DomainError::already_exists(
                        "problem.result_already_exists",
                        format!(
                            "analysis plan {} already has a result (or result {} exists)",
                            result.plan_id, result.result_id
                        ),
                    ));
                }
                let mut ids = BTreeSet::new();
                if !result.artifacts.iter().all(|a| ids.insert(a.artifact_id)) {
                    return Err(DomainError::invalid(
                        "problem.duplicate_artifact",
                        "artifacts",
                        "artifact ids must be unique within a result",
                    ));
                }
                ProblemEvent::AnalysisResultRecorded(AnalysisResultRecorded {
                    problem_id,
                    result,
                    at,
                })
            }
            C::AddRecommendation { recommendation, .. } => {
                require_stage(p, S::Synthesizing, "add recommendations")?;
                check_len("evidence", &recommendation.evidence, MAX_LIST_ITEMS)?;
                check_len("actions", &recommendation.actions, MAX_LIST_ITEMS)?;
                check_len("risks", &recommendation.risks, MAX_LIST_ITEMS)?;
                if p.recommendations
                    .contains(&recommendation.recommendation_id)
                {
                    return Err(DomainError::already_exists(
                        "problem.recommendation_already_exists",
                        format!(
                            "recommendation {} already exists",
                            recommendation.recommendation_id
                        ),
                    ));
                }
                ProblemEvent::RecommendationAdded(RecommendationAdded {
                    problem_id,
                    recommendation,
                    at,
                })
            }
            C::AddDeliverable { deliverable, .. } => {
                require_stage(p, S::Presenting, "add deliverables")?;
                if p.deliverables.contains_key(&deliverable.deliverable_id) {
                    return Err(DomainError::already_exists(
                        "problem.deliverable_already_exists",
                        format!("deliverable {} already exists", deliverable.deliverable_id),
                    ));
                }
                ProblemEvent::DeliverableAdded(DeliverableAdded {
                    problem_id,
                    deliverable,
                    at,
                })
            }
            C::MarkDeliverableReady { deliverable_id, .. } => {
                require_stage(p, S::Presenting, "update deliverables")?;
                require_generating(p, deliverable_id)?;
                ProblemEvent::DeliverableReady(DeliverableStatusChanged {
                    problem_id,
                    deliverable_id,
                    reason: None,
                    at,
                })
            }
            C::MarkDeliverableFailed {
                deliverable_id,
                reason,
                ..
            } => {
                require_stage(p, S::Presenting, "update deliverables")?;
                require_generating(p, deliverable_id)?;
                ProblemEvent::DeliverableFailed(DeliverableStatusChanged {
                    problem_id,
                    deliverable_id,
                    reason: Some(reason),
                    at,
                })
            }
            C::SubmitFeedback { feedback, .. } => {
                if !matches!(p.stage, S::Presenting | S::Completed) {
                    return Err(DomainError::precondition(
                        "problem.invalid_stage",
                        format!(
                            "feedback is accepted in presenting or completed; the problem is {}",
                            p.stage
                        ),
                    ));
                }
                check_len(
                    "improvement_suggestions",
                    &feedback.improvement_suggestions,
                    MAX_LIST_ITEMS,
                )?;
                if p.feedback_by.contains(&feedback.user) {
                    return Err(DomainError::already_exists(
                        "problem.feedback_already_submitted",
                        format!("{} already gave feedback on this problem", feedback.user),
                    ));
                }
                ProblemEvent::FeedbackSubmitted(FeedbackSubmitted {
                    problem_id,
                    feedback,
                    at,
                })
            }
        };
        Ok(vec![event])
    }

    fn evolve(state: ProblemState, event: &ProblemEvent) -> ProblemState {
        if let ProblemEvent::Submitted(e) = event {
            return Some(ProblemData {
                id: e.problem.problem_id,
                title: e.problem.title.clone(),
                submitter: e.problem.submitter.clone(),
                urgency: e.problem.urgency,
                organization_id: e.problem.organization_id,
                stage: ProblemStage::Created,
                frame: None,
                nodes: BTreeMap::new(),
                priorities: BTreeMap::new(),
                priority_inputs: BTreeMap::new(),
                plans: BTreeMap::new(),
                recommendations: BTreeSet::new(),
                deliverables: BTreeMap::new(),
                feedback_by: BTreeSet::new(),
                created_at: e.at,
                updated_at: e.at,
                completed_at: None,
            });
        }
        // See task::evolve: events before creation cannot come from decide; ignore them.
        let mut p = state?;
        match event {
            ProblemEvent::Submitted(_) => {}
            ProblemEvent::StageAdvanced(e) => {
                p.stage = e.to;
                p.updated_at = e.at;
                if e.to == ProblemStage::Completed {
                    p.completed_at = Some(e.at);
                }
            }
            ProblemEvent::Failed(e) => {
                p.stage = ProblemStage::Failed;
                p.updated_at = e.at;
            }
            ProblemEvent::Cancelled(e) => {
                p.stage = ProblemStage::Cancelled;
                p.updated_at = e.at;
            }
            ProblemEvent::FrameDefined(e) => {
                p.frame = Some(e.frame.clone());
                p.updated_at = e.at;
            }
            ProblemEvent::TreeNodeAdded(e) => {
                p.nodes.insert(
                    e.node.node_id,
                    NodeInfo {
                        parent_id: e.node.parent_id,
                        level: e.level,
                    },
                );
                p.updated_at = e.at;
            }
            ProblemEvent::NodePrioritized(e) => {
                p.priorities.insert(e.priority.node_id, e.priority_score);
                p.priority_inputs
                    .insert(e.priority.node_id, e.priority.clone());
                p.updated_at = e.at;
            }
            ProblemEvent::AnalysisPlanCreated(e) => {
                p.plans.insert(e.plan.plan_id, None);
                p.updated_at = e.at;
            }
            ProblemEvent::AnalysisResultRecorded(e) => {
                p.plans.insert(e.result.plan_id, Some(e.result.result_id));
                p.updated_at = e.at;
            }
            ProblemEvent::RecommendationAdded(e) => {
                p.recommendations.insert(e.recommendation.recommendation_id);
                p.updated_at = e.at;
            }
            ProblemEvent::DeliverableAdded(e) => {
                p.deliverables
                    .insert(e.deliverable.deliverable_id, DeliverableStatus::Generating);
                p.updated_at = e.at;
            }
            ProblemEvent::DeliverableReady(e) => {
                p.deliverables
                    .insert(e.deliverable_id, DeliverableStatus::Ready);
                p.updated_at = e.at;
            }
            ProblemEvent::DeliverableFailed(e) => {
                p.deliverables
                    .insert(e.deliverable_id, DeliverableStatus::Failed);
                p.updated_at = e.at;
            }
            ProblemEvent::FeedbackSubmitted(e) => {
                p.feedback_by.insert(e.feedback.user.clone());
                p.updated_at = e.at;
            }
        }
        Some(p)
    }
}

fn not_found(id: ProblemId) -> DomainError {
    DomainError::not_found("problem.not_found", format!("problem {id} does not exist"))
}

fn already_exists(id: ProblemId) -> DomainError {
    DomainError::already_exists(
        "problem.already_exists",
        format!("problem {id} already exists"),
    )
}

fn end(p: &ProblemData, reason: Text, at: DateTime<Utc>) -> Result<ProblemEnded, DomainError> {
    if p.stage.is_terminal() {
        return Err(terminal(p));
    }
    Ok(ProblemEnded {
        problem_id: p.id,
        from: p.stage,
        reason,
        at,
    })
}

fn terminal(p: &ProblemData) -> DomainError {
    DomainError::precondition(
        "problem.terminal",
        format!("the problem is {}; nothing more can happen to it", p.stage),
    )
}

fn require_stage(p: &ProblemData, stage: ProblemStage, action: &str) -> Result<(), DomainError> {
    if p.stage != stage {
        return Err(DomainError::precondition(
            "problem.invalid_stage",
            format!(
                "can only {action} in stage {stage}; the problem is {}",
                p.stage
            ),
        ));
    }
    Ok(())
}

fn require_node(p: &ProblemData, node: NodeId) -> Result<(), DomainError> {
    if !p.nodes.contains_key(&node) {
        return Err(DomainError::not_found(
            "problem.node_not_found",
            format!("tree node {node} does not exist"),
        ));
    }
    Ok(())
}

fn require_generating(p: &ProblemData, id: DeliverableId) -> Result<(), DomainError> {
    match p.deliverables.get(&id) {
        None => Err(DomainError::not_found(
            "problem.deliverable_not_found",
            format!("deliverable {id} does not exist"),
        )),
        Some(DeliverableStatus::Generating) => Ok(()),
        Some(s) => Err(DomainError::precondition(
            "problem.deliverable_not_generating",
            format!("deliverable {id} is {s}, not generating"),
        )),
    }
}

fn check_frame(f: &ProblemFrame) -> Result<(), DomainError> {
    for (field, items) in [
        ("scope.include", &f.scope.include),
        ("scope.exclude", &f.scope.exclude),
        ("stakeholders", &f.stakeholders),
        ("assumptions", &f.assumptions),
        ("constraints", &f.constraints),
    ] {
        check_len(field, items, MAX_LIST_ITEMS)?;
    }
    check_len("kpis", &f.kpis, MAX_LIST_ITEMS)?;
    check_len(
        "clarifying_questions",
        &f.clarifying_questions,
        MAX_LIST_ITEMS,
    )
}

fn check_entry(p: &ProblemData, to: ProblemStage) -> Result<(), DomainError> {
    use ProblemStage as S;
    let (ok, what) = match to {
        S::TreeGeneration => (p.frame.is_some(), "a defined frame"),
        S::Prioritizing => (!p.nodes.is_empty(), "at least one issue-tree node"),
        S::Planning => (!p.priorities.is_empty(), "at least one prioritized node"),
        S::Analyzing => (!p.plans.is_empty(), "at least one analysis plan"),
        S::Synthesizing => (p.results().next().is_some(), "at least one analysis result"),
        S::Presenting => (!p.recommendations.is_empty(), "at least one recommendation"),
        S::Completed => (
            p.deliverables
                .values()
                .any(|s| *s == DeliverableStatus::Ready),
            "at least one ready deliverable",
        ),
        S::Created | S::Framing | S::Failed | S::Cancelled => (true, ""),
    };
    if !ok {
        return Err(DomainError::precondition(
            "problem.stage_requirements_unmet",
            format!("advancing to {to} requires {what}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::testing::{given, now};
    use crate::values::Money;
    use uuid::Uuid;

    type C = ProblemCommand;
    type E = ProblemEvent;

    fn pid() -> ProblemId {
        ProblemId::new(Uuid::from_u128(1)).unwrap()
    }
    fn nid(n: u128) -> NodeId {
        NodeId::new(Uuid::from_u128(10 + n)).unwrap()
    }
    fn t(s: &str) -> Text {
        Text::parse("text", s).unwrap()
    }
    fn submit() -> SubmitProblem {
        SubmitProblem {
            problem_id: pid(),
            raw_text: RawText::parse("Churn is up 5%").unwrap(),
            title: Some(ProblemTitle::parse("Churn").unwrap()),
            submitter: UserRef::parse("alice").unwrap(),
            urgency: Urgency::High,
            metadata: JsonObject::new(),
            organization_id: None,
        }
    }
    fn submitted() -> E {
        E::Submitted(ProblemSubmitted {
            problem: submit(),
            created_by: "tester".into(),
            at: now(),
        })
    }
    fn advanced(from: ProblemStage, to: ProblemStage) -> E {
        E::StageAdvanced(StageAdvanced {
            problem_id: pid(),
            from,
            to,
            at: now(),
        })
    }
    fn advance(to: ProblemStage) -> C {
        C::AdvanceStage {
            problem_id: pid(),
            to,
        }
    }
    fn frame() -> ProblemFrame {
        ProblemFrame {
            goal: t("Reduce churn"),
            scope: Scope {
                include: vec![t("EU")],
                exclude: vec![],
            },
            kpis: vec![Kpi {
                name: t("churn"),
                baseline: Some(Decimal::new(5, 2)),
                target: Some(Decimal::new(3, 2)),
                window: None,
                unit: Some(t("%")),
            }],
            stakeholders: vec![t("CFO")],
            assumptions: vec![],
            constraints: vec![],
            confidence: Level::Medium,
            clarifying_questions: vec![ClarifyingQuestion {
                question: t("Which segment?"),
                category: None,
                required: true,
                answer: None,
            }],
        }
    }
    fn node(n: u128, parent: Option<u128>) -> TreeNode {
        TreeNode {
            node_id: nid(n),
            parent_id: parent.map(nid),
            title: t("Why?"),
            hypotheses: vec![t("price")],
            required_data: vec![],
            priority_hint: Some(Level::High),
            notes: None,
        }
    }
    fn node_added(n: u128, parent: Option<u128>, level: u32) -> E {
        E::TreeNodeAdded(TreeNodeAdded {
            problem_id: pid(),
            node: node(n, parent),
            level,
            at: now(),
        })
    }
    fn priority(n: u128, impact: u8, feasibility: u8) -> NodePriority {
        NodePriority {
            node_id: nid(n),
            impact: Impact::new(impact).unwrap(),
            feasibility: Feasibility::new(feasibility).unwrap(),
            rationale: None,
            estimated_hours: Some(8),
            estimated_cost: Some(Money::new(Decimal::new(12050, 2)).unwrap()),
            confidence: Some(Confidence::new(Decimal::new(8, 1)).unwrap()),
            is_recommended: true,
        }
    }
    fn plan_id() -> PlanId {
        PlanId::new(Uuid::from_u128(20)).unwrap()
    }
    fn plan() -> AnalysisPlan {
        AnalysisPlan {
            plan_id: plan_id(),
            question_id: nid(1),
            title: ProblemTitle::parse("Cohort analysis").unwrap(),
            methods: vec![t("cohort")],
            data_requirements: vec![DataRequirement {
                source: t("warehouse"),
                table: Some(t("customers")),
                columns: vec![t("id")],
                filters: None,
                sample_size: Some(1000),
            }],
            estimated_hours: Some(4),
            owner: None,
            dependencies: vec![],
            acceptance_criteria: vec![],
        }
    }
    fn result(id: u128) -> AnalysisResult {
        AnalysisResult {
            result_id: ResultId::new(Uuid::from_u128(30 + id)).unwrap(),
            plan_id: plan_id(),
            summary: Some(t("price matters")),
            key_findings: vec![t("x")],
            metrics: JsonObject::new(),
            confidence: Some(Confidence::new(Decimal::new(9, 1)).unwrap()),
            execution_time_secs: Some(60),
            artifacts: vec![Artifact {
                artifact_id: ArtifactId::new(Uuid::from_u128(40)).unwrap(),
                artifact_type: ArtifactType::Chart,
                file_path: FilePath::parse("s3://bucket/chart.png").unwrap(),
                file_size: Some(1024),
                mime_type: Some(MimeType::parse("image/png").unwrap()),
                description: None,
            }],
        }
    }
    fn recommendation() -> Recommendation {
        Recommendation {
            recommendation_id: RecommendationId::new(Uuid::from_u128(50)).unwrap(),
            title: ProblemTitle::parse("Lower prices").unwrap(),
            summary: t("Cut price 5%"),
            evidence: vec![t("cohort")],
            actions: vec![RecommendationAction {
                step: t("1"),
                description: None,
                owner: None,
                due_date: Some(now()),
                success_criteria: None,
            }],
            expected_impact: Some(ExpectedImpact {
                kpi: t("churn"),
                delta_percentage: Some(Decimal::new(-2, 0)),
                delta_absolute: None,
                timeframe: None,
            }),
            risks: vec![Risk {
                risk: t("margin"),
                mitigation: None,
                probability: Level::Low,
                impact: Level::High,
            }],
            confidence: Some(Confidence::new(Decimal::new(7, 1)).unwrap()),
            priority: RecommendationPriority::new(1).unwrap(),
        }
    }
    fn did() -> DeliverableId {
        DeliverableId::new(Uuid::from_u128(60)).unwrap()
    }
    fn deliverable() -> Deliverable {
        Deliverable {
            deliverable_id: did(),
            deliverable_type: DeliverableType::Pdf,
            file_path: FilePath::parse("s3://bucket/report.pdf").unwrap(),
            file_size: None,
            mime_type: None,
            expires_at: None,
        }
    }
    fn feedback(user: &str) -> Feedback {
        Feedback {
            user: UserRef::parse(user).unwrap(),
            rating: Rating::new(5).unwrap(),
            text: None,
            improvement_suggestions: vec![],
            category: None,
        }
    }

    /// Runs the whole pipeline through `decide`, returning the history up to (and including)
    /// entering `until`.
    fn history_until(until: ProblemStage) -> Vec<E> {
        use ProblemStage as S;
        let mut h = vec![submitted()];
        let mut stage = S::Created;
        let step = |h: &mut Vec<E>, c: C| {
            let ev = given::<Problem>(h.clone()).when(c).then_ok();
            h.extend(ev);
        };
        while stage != until {
            match stage {
                S::Framing => step(
                    &mut h,
                    C::DefineFrame {
                        problem_id: pid(),
                        frame: frame(),
                    },
                ),
                S::TreeGeneration => {
                    step(
                        &mut h,
                        C::AddTreeNode {
                            problem_id: pid(),
                            node: node(1, None),
                        },
                    );
                }
                S::Prioritizing => step(
                    &mut h,
                    C::PrioritizeNode {
                        problem_id: pid(),
                        priority: priority(1, 8, 5),
                    },
                ),
                S::Planning => step(
                    &mut h,
                    C::CreateAnalysisPlan {
                        problem_id: pid(),
                        plan: plan(),
                    },
                ),
                S::Analyzing => step(
                    &mut h,
                    C::RecordAnalysisResult {
                        problem_id: pid(),
                        result: result(0),
                    },
                ),
                S::Synthesizing => step(
                    &mut h,
                    C::AddRecommendation {
                        problem_id: pid(),
                        recommendation: recommendation(),
                    },
                ),
                S::Presenting => {
                    step(
                        &mut h,
                        C::AddDeliverable {
                            problem_id: pid(),
                            deliverable: deliverable(),
                        },
                    );
                    step(
                        &mut h,
                        C::MarkDeliverableReady {
                            problem_id: pid(),
                            deliverable_id: did(),
                        },
                    );
                }
                _ => {}
            }
            let next = stage.next().unwrap();
            given::<Problem>(h.clone())
                .when(advance(next))
                .then([advanced(stage, next)]);
            h.push(advanced(stage, next));
            stage = next;
        }
        h
    }

    #[test]
    fn full_pipeline_reaches_completed() {
        let h = history_until(ProblemStage::Completed);
        let p = Problem::replay(&h).unwrap();
        assert_eq!(p.stage, ProblemStage::Completed);
        assert_eq!(p.completed_at, Some(now()));
        assert_eq!(p.priorities.get(&nid(1)), Some(&Decimal::new(400, 2)));
    }

    #[test]
    fn submit_and_duplicate() {
        given::<Problem>([])
            .when(C::SubmitProblem(submit()))
            .then([submitted()]);
        given::<Problem>([submitted()])
            .when(C::SubmitProblem(submit()))
            .then_err_kind("problem.already_exists", ErrorKind::AlreadyExists);
        given::<Problem>([])
            .when(advance(ProblemStage::Framing))
            .then_err_kind("problem.not_found", ErrorKind::NotFound);
        assert_eq!(
            Urgency::parse("urgent").unwrap_err().code(),
            "problem.invalid_urgency"
        );
    }

    #[test]
    fn stages_advance_one_at_a_time_with_entry_rules() {
        given::<Problem>([submitted()])
            .when(advance(ProblemStage::TreeGeneration))
            .then_err_kind(
                "problem.invalid_stage_transition",
                ErrorKind::FailedPrecondition,
            );
        given::<Problem>(history_until(ProblemStage::Framing))
            .when(advance(ProblemStage::TreeGeneration))
            .then_err("problem.stage_requirements_unmet");
        for stage in [
            ProblemStage::TreeGeneration,
            ProblemStage::Prioritizing,
            ProblemStage::Planning,
            ProblemStage::Analyzing,
            ProblemStage::Synthesizing,
            ProblemStage::Presenting,
        ] {
            given::<Problem>(history_until(stage))
                .when(advance(stage.next().unwrap()))
                .then_err("problem.stage_requirements_unmet");
        }
        given::<Problem>(history_until(ProblemStage::Completed))
            .when(advance(ProblemStage::Completed))
            .then_err("problem.terminal");
    }

    #[test]
    fn fail_and_cancel_from_any_non_terminal_stage() {
        let ended = |from| ProblemEnded {
            problem_id: pid(),
            from,
            reason: t("no budget"),
            at: now(),
        };
        for stage in [ProblemStage::Created, ProblemStage::Analyzing] {
            given::<Problem>(history_until(stage))
                .when(C::CancelProblem {
                    problem_id: pid(),
                    reason: t("no budget"),
                })
                .then([E::Cancelled(ended(stage))]);
            given::<Problem>(history_until(stage))
                .when(C::FailProblem {
                    problem_id: pid(),
                    reason: t("no budget"),
                })
                .then([E::Failed(ended(stage))]);
        }
        let mut h = history_until(ProblemStage::Planning);
        h.push(E::Failed(ended(ProblemStage::Planning)));
        given::<Problem>(h.clone())
            .when(C::CancelProblem {
                problem_id: pid(),
                reason: t("x"),
            })
            .then_err("problem.terminal");
        given::<Problem>(h)
            .when(advance(ProblemStage::Analyzing))
            .then_err("problem.terminal");
    }

    #[test]
    fn frame_only_in_framing() {
        given::<Problem>(history_until(ProblemStage::Framing))
            .when(C::DefineFrame {
                problem_id: pid(),
                frame: frame(),
            })
            .then([E::FrameDefined(FrameDefined {
                problem_id: pid(),
                frame: frame(),
                at: now(),
            })]);
        given::<Problem>([submitted()])
            .when(C::DefineFrame {
                problem_id: pid(),
                frame: frame(),
            })
            .then_err("problem.invalid_stage");
        let mut f = frame();
        f.stakeholders = (0..=MAX_LIST_ITEMS).map(|_| t("x")).collect();
        let e = given::<Problem>(history_until(ProblemStage::Framing))
            .when(C::DefineFrame {
                problem_id: pid(),
                frame: f,
            })
            .then_err("value.too_many_items");
        assert_eq!(e.field(), Some("stakeholders"));
    }

    #[test]
    fn tree_nodes_derive_level_from_parent() {
        let h = history_until(ProblemStage::TreeGeneration);
        let add = |n, parent| C::AddTreeNode {
            problem_id: pid(),
            node: node(n, parent),
        };
        given::<Problem>(h.clone())
            .when(add(1, None))
            .then([node_added(1, None, 0)]);
        let mut h2 = h.clone();
        h2.push(node_added(1, None, 0));
        given::<Problem>(h2.clone())
            .when(add(2, Some(1)))
            .then([node_added(2, Some(1), 1)]);
        h2.push(node_added(2, Some(1), 1));
        given::<Problem>(h2.clone())
            .when(add(3, Some(2)))
            .then([node_added(3, Some(2), 2)]);
        given::<Problem>(h2.clone())
            .when(add(4, None))
            .then_err("problem.root_exists");
        given::<Problem>(h2.clone())
            .when(add(4, Some(9)))
            .then_err_kind("problem.parent_node_not_found", ErrorKind::NotFound);
        given::<Problem>(h2)
            .when(add(2, Some(1)))
            .then_err_kind("problem.node_already_exists", ErrorKind::AlreadyExists);
        given::<Problem>(history_until(ProblemStage::Framing))
            .when(add(1, None))
            .then_err("problem.invalid_stage");
    }

    #[test]
    fn the_same_frame_or_priority_again_writes_nothing() {
        let mut h = history_until(ProblemStage::Framing);
        let define = || C::DefineFrame {
            problem_id: pid(),
            frame: frame(),
        };
        h.extend(given::<Problem>(h.clone()).when(define()).then_ok());
        given::<Problem>(h).when(define()).then([]);

        let mut h = history_until(ProblemStage::Prioritizing);
        let prioritize = |impact| C::PrioritizeNode {
            problem_id: pid(),
            priority: priority(1, impact, 3),
        };
        h.extend(given::<Problem>(h.clone()).when(prioritize(7)).then_ok());
        given::<Problem>(h.clone()).when(prioritize(7)).then([]);
        assert_eq!(
            given::<Problem>(h).when(prioritize(8)).then_ok().len(),
            1,
            "a changed input is written"
        );
    }

    #[test]
    fn prioritization_derives_score() {
        let h = history_until(ProblemStage::Prioritizing);
        given::<Problem>(h.clone())
            .when(C::PrioritizeNode {
                problem_id: pid(),
                priority: priority(1, 7, 3),
            })
            .then([E::NodePrioritized(NodePrioritized {
                problem_id: pid(),
                priority: priority(1, 7, 3),
                priority_score: Decimal::new(210, 2),
                at: now(),
            })]);
        given::<Problem>(h)
            .when(C::PrioritizeNode {
                problem_id: pid(),
                priority: priority(5, 7, 3),
            })
            .then_err("problem.node_not_found");
        assert_eq!(priority(1, 10, 10).score(), Decimal::TEN);
        assert_eq!(priority(1, 1, 1).score(), Decimal::new(1, 1));
    }

    #[test]
    fn plans_and_results() {
        let h = history_until(ProblemStage::Planning);
        let mut bad = plan();
        bad.question_id = nid(9);
        given::<Problem>(h)
            .when(C::CreateAnalysisPlan {
                problem_id: pid(),
                plan: bad,
            })
            .then_err("problem.node_not_found");
        let h = history_until(ProblemStage::Analyzing);
        given::<Problem>(h.clone())
            .when(C::CreateAnalysisPlan {
                problem_id: pid(),
                plan: plan(),
            })
            .then_err("problem.invalid_stage");
        let mut other = result(0);
        other.plan_id = PlanId::new(Uuid::from_u128(99)).unwrap();
        given::<Problem>(h.clone())
            .when(C::RecordAnalysisResult {
                problem_id: pid(),
                result: other,
            })
            .then_err("problem.plan_not_found");
        let mut dup = result(0);
        dup.artifacts.push(dup.artifacts[0].clone());
        given::<Problem>(h.clone())
            .when(C::RecordAnalysisResult {
                problem_id: pid(),
                result: dup,
            })
            .then_err("problem.duplicate_artifact");
        let ev = given::<Problem>(h.clone())
            .when(C::RecordAnalysisResult {
                problem_id: pid(),
                result: result(0),
            })
            .then_ok();
        let mut h2 = h;
        h2.extend(ev);
        given::<Problem>(h2)
            .when(C::RecordAnalysisResult {
                problem_id: pid(),
                result: result(1),
            })
            .then_err("problem.result_already_exists");
    }

    #[test]
    fn recommendations_only_in_synthesizing() {
        given::<Problem>(history_until(ProblemStage::Analyzing))
            .when(C::AddRecommendation {
                problem_id: pid(),
                recommendation: recommendation(),
            })
            .then_err("problem.invalid_stage");
        let mut h = history_until(ProblemStage::Synthesizing);
        let ev = given::<Problem>(h.clone())
            .when(C::AddRecommendation {
                problem_id: pid(),
                recommendation: recommendation(),
            })
            .then_ok();
        h.extend(ev);
        given::<Problem>(h)
            .when(C::AddRecommendation {
                problem_id: pid(),
                recommendation: recommendation(),
            })
            .then_err("problem.recommendation_already_exists");
    }

    #[test]
    fn deliverable_lifecycle() {
        let h = history_until(ProblemStage::Presenting);
        given::<Problem>(h.clone())
            .when(C::MarkDeliverableReady {
                problem_id: pid(),
                deliverable_id: did(),
            })
            .then_err("problem.deliverable_not_found");
        let mut h2 = h.clone();
        h2.extend(
            given::<Problem>(h)
                .when(C::AddDeliverable {
                    problem_id: pid(),
                    deliverable: deliverable(),
                })
                .then_ok(),
        );
        given::<Problem>(h2.clone())
            .when(C::AddDeliverable {
                problem_id: pid(),
                deliverable: deliverable(),
            })
            .then_err("problem.deliverable_already_exists");
        given::<Problem>(h2.clone())
            .when(C::MarkDeliverableFailed {
                problem_id: pid(),
                deliverable_id: did(),
                reason: t("renderer crashed"),
            })
            .then([E::DeliverableFailed(DeliverableStatusChanged {
                problem_id: pid(),
                deliverable_id: did(),
                reason: Some(t("renderer crashed")),
                at: now(),
            })]);
        h2.push(E::DeliverableReady(DeliverableStatusChanged {
            problem_id: pid(),
            deliverable_id: did(),
            reason: None,
            at: now(),
        }));
        given::<Problem>(h2)
            .when(C::MarkDeliverableReady {
                problem_id: pid(),
                deliverable_id: did(),
            })
            .then_err("problem.deliverable_not_generating");
    }

    #[test]
    fn feedback_once_per_user_after_presenting() {
        given::<Problem>(history_until(ProblemStage::Synthesizing))
            .when(C::SubmitFeedback {
                problem_id: pid(),
                feedback: feedback("bob"),
            })
            .then_err("problem.invalid_stage");
        let mut h = history_until(ProblemStage::Completed);
        let sub = E::FeedbackSubmitted(FeedbackSubmitted {
            problem_id: pid(),
            feedback: feedback("bob"),
            at: now(),
        });
        given::<Problem>(h.clone())
            .when(C::SubmitFeedback {
                problem_id: pid(),
                feedback: feedback("bob"),
            })
            .then([sub.clone()]);
        h.push(sub);
        given::<Problem>(h.clone())
            .when(C::SubmitFeedback {
                problem_id: pid(),
                feedback: feedback("bob"),
            })
            .then_err_kind(
                "problem.feedback_already_submitted",
                ErrorKind::AlreadyExists,
            );
        given::<Problem>(h)
            .when(C::SubmitFeedback {
                problem_id: pid(),
                feedback: feedback("carol"),
            })
            .then_ok();
    }
}
