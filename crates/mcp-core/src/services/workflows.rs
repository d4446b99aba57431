//! The workflow service: the one path by which anything creates, reads, lists, cancels or
//! extends a workflow. Every task of a workflow goes through the task service's rules (who may
//! create which type, quota, priority and timeout ceilings, share key and namespace), so a
//! workflow can do nothing its tasks could not do one by one.

use super::tasks::{Creator, TaskService, TaskServiceError, parse_id};
use crate::orchestrator::Orchestrator;
use crate::principal::{Permission, Principal};
use crate::task::{CreateTask, Task, TaskStatus};
use crate::workflow::{
    AddWorkflowTasks, CreateWorkflow, InvalidWorkflow, MAX_WORKFLOW_TASKS, NewWorkflow, Workflow,
    WorkflowDetail, WorkflowFilter, WorkflowNode, WorkflowStatus, WorkflowTaskSpec, check_graph,
    check_name,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum WorkflowServiceError {
    #[error(transparent)]
    Invalid(#[from] InvalidWorkflow),
    #[error(transparent)]
    Task(#[from] TaskServiceError),
    #[error("no workflow with id `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("workflow `{id}` is {status}: nothing left to cancel")]
    AlreadyFinished { id: String, status: WorkflowStatus },
    #[error("workflow `{id}` is {status}: tasks can only be added while it runs")]
    NotRunning { id: String, status: WorkflowStatus },
}

impl From<crate::StoreError> for WorkflowServiceError {
    fn from(e: crate::StoreError) -> Self {
        WorkflowServiceError::Task(e.into())
    }
}

impl From<crate::orchestrator::OrchestratorError> for WorkflowServiceError {
    fn from(e: crate::orchestrator::OrchestratorError) -> Self {
        WorkflowServiceError::Task(e.into())
    }
}

impl std::fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A page of workflows, newest first.
#[derive(Debug, Clone)]
pub struct WorkflowPage {
    pub workflows: Vec<Workflow>,
    pub next_cursor: Option<Uuid>,
}

pub struct WorkflowService {
    tasks: Arc<TaskService>,
    orchestrator: Arc<Orchestrator>,
}

impl WorkflowService {
    pub fn new(tasks: Arc<TaskService>, orchestrator: Arc<Orchestrator>) -> Self {
        WorkflowService {
            tasks,
            orchestrator,
        }
    }

    /// Whether `principal` may see `workflow`: its own, or any with `workflows:read:any`.
    pub fn may_see(principal: &Principal, workflow: &Workflow) -> bool {
        principal.can(Permission::WorkflowsReadAny)
            || workflow.created_by.as_deref() == Some(principal.subject.as_str())
    }

    /// Creates a workflow and all its tasks atomically: if one is invalid, nothing is created.
    pub async fn create(
        &self,
        creator: Creator<'_>,
        request: CreateWorkflow,
        correlation: Option<&str>,
    ) -> Result<WorkflowDetail, WorkflowServiceError> {
        check_name(&request.name)?;
        check_graph(&request.tasks, &HashSet::new(), MAX_WORKFLOW_TASKS)?;
        let (tasks, nodes) = self
            .prepare(creator, &request.tasks, &HashMap::new(), correlation)
            .await?;
        let workflow = NewWorkflow {
            id: Uuid::now_v7(),
            name: request.name,
            on_failure: request.on_failure,
            created_by: tasks.first().and_then(|t| t.created_by.clone()),
            share_key: tasks.first().and_then(|t| t.share_key.clone()),
            correlation_id: correlation.map(str::to_owned),
        };
        self.tasks.charge(creator, tasks.len() as u64).await?;
        let (workflow, tasks) = self
            .orchestrator
            .insert_workflow(&workflow, &tasks, &nodes)
            .await?;
        let tasks = tasks.into_iter().map(Arc::unwrap_or_clone).collect();
        Ok(WorkflowDetail { workflow, tasks })
    }

    /// Validates the tasks through the task service and places them in the graph: each task's
    /// dependencies by id (`existing` maps the workflow's keys to their tasks).
    async fn prepare(
        &self,
        creator: Creator<'_>,
        specs: &[WorkflowTaskSpec],
        existing: &HashMap<String, Uuid>,
        correlation: Option<&str>,
    ) -> Result<(Vec<crate::task::NewTask>, Vec<WorkflowNode>), WorkflowServiceError> {
        let requests: Vec<CreateTask> = specs.iter().map(|s| s.task.clone()).collect();
        let tasks = self.tasks.prepare(creator, requests, correlation).await?;
        let mut ids: HashMap<&str, Uuid> = existing.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        for (spec, task) in specs.iter().zip(&tasks) {
            ids.insert(spec.key.as_str(), task.id);
        }
        let nodes = specs
            .iter()
            .map(|spec| WorkflowNode {
                key: spec.key.clone(),
                // `check_graph` made sure every key is known.
                depends_on: spec
                    .depends_on
                    .iter()
                    .filter_map(|d| ids.get(d.as_str()).copied())
                    .collect(),
            })
            .collect();
        Ok((tasks, nodes))
    }

    /// The workflow with every task's state, if `principal` may see it.
    pub async fn get(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<WorkflowDetail, WorkflowServiceError> {
        let workflow_id = parse_id(id).map_err(|_| WorkflowServiceError::NotFound(id.into()))?;
        match self.orchestrator.store().get_workflow(workflow_id).await? {
            Some(detail) if Self::may_see(principal, &detail.workflow) => Ok(detail),
            _ => Err(WorkflowServiceError::NotFound(id.to_owned())),
        }
    }

    /// A page of the workflows `principal` may see, newest first.
    pub async fn list(
        &self,
        principal: &Principal,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<WorkflowPage, WorkflowServiceError> {
        let mut workflows = self
            .orchestrator
            .store()
            .list_workflows(&WorkflowFilter {
                created_by: (!principal.can(Permission::WorkflowsReadAny))
                    .then(|| principal.subject.clone()),
                before,
                limit: limit + 1,
            })
            .await?;
        let next_cursor = if super::trim_page(&mut workflows, limit as usize) {
            workflows.last().map(|w| w.id)
        } else {
            None
        };
        Ok(WorkflowPage {
            workflows,
            next_cursor,
        })
    }

    /// Cancels every unfinished task of a workflow: its creator may, and whoever manages
    /// workflows.
    pub async fn cancel(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<WorkflowDetail, WorkflowServiceError> {
        let detail = self.get(principal, id).await?;
        if !principal.can(Permission::WorkflowsManage)
            && detail.workflow.created_by.as_deref() != Some(principal.subject.as_str())
        {
            return Err(WorkflowServiceError::Forbidden(
                "only the workflow's creator (or an operator) may cancel it",
            ));
        }
        if detail.workflow.status != WorkflowStatus::Running {
            return Err(WorkflowServiceError::AlreadyFinished {
                id: id.to_owned(),
                status: detail.workflow.status,
            });
        }
        match self
            .orchestrator
            .cancel_workflow(detail.workflow.id)
            .await?
        {
            Some(_) => self.get(principal, id).await,
            None => Err(WorkflowServiceError::NotFound(id.to_owned())),
        }
    }

    /// Adds tasks to the running workflow of the running task `parent` (its children): for the
    /// task's handler or worker. The new tasks are `creator`'s, under the task service's rules
    /// (quota, a tenant's priority ceiling, longest timeout, share key and namespace), carry the
    /// parent's correlation id, and may depend on the workflow's existing keys.
    pub async fn add_tasks(
        &self,
        creator: Creator<'_>,
        parent: &Task,
        request: AddWorkflowTasks,
    ) -> Result<Vec<Task>, WorkflowServiceError> {
        let correlation = parent.correlation_id.as_deref();
        let Some(workflow_id) = parent.workflow_id else {
            return Err(InvalidWorkflow("task_id: the task belongs to no workflow".into()).into());
        };
        if parent.status != TaskStatus::Running {
            return Err(InvalidWorkflow(format!(
                "task_id: only a running task may add tasks to its workflow; this one is {}",
                parent.status
            ))
            .into());
        }
        let detail = self
            .orchestrator
            .store()
            .get_workflow(workflow_id)
            .await?
            .ok_or_else(|| WorkflowServiceError::NotFound(workflow_id.to_string()))?;
        let existing: HashMap<String, Uuid> = detail
            .tasks
            .iter()
            .filter_map(|t| Some((t.workflow_key.clone()?, t.id)))
            .collect();
        let keys: HashSet<String> = existing.keys().cloned().collect();
        let room = MAX_WORKFLOW_TASKS.saturating_sub(detail.tasks.len());
        check_graph(&request.tasks, &keys, room)?;
        let (tasks, nodes) = self
            .prepare(creator, &request.tasks, &existing, correlation)
            .await?;
        self.tasks.charge(creator, tasks.len() as u64).await?;
        match self
            .orchestrator
            .extend_workflow(workflow_id, &tasks, &nodes)
            .await?
        {
            Some(created) => Ok(created),
            None => Err(WorkflowServiceError::NotRunning {
                id: workflow_id.to_string(),
                status: detail.workflow.status,
            }),
        }
    }

    /// Adds children for a principal that may see the workflow, or that runs tasks (`tasks:run`:
    /// an external worker adding to the workflow of the task it was given).
    pub async fn add_tasks_for(
        &self,
        principal: &Principal,
        workflow_id: &str,
        task_id: &str,
        request: AddWorkflowTasks,
    ) -> Result<Vec<Task>, WorkflowServiceError> {
        // Who may see the workflow may add to it; a worker that cannot see it only for the task
        // it holds (else naming a running task would let it read other tenants' results through
        // a child's `parents`).
        let holder = principal.can(Permission::TasksRun)
            && parse_id(task_id)
                .is_ok_and(|id| self.orchestrator.balancer().held_by(&principal.subject, id));
        let detail = match self.get(principal, workflow_id).await {
            Ok(detail) => detail,
            Err(WorkflowServiceError::NotFound(_)) if holder => {
                let id = parse_id(workflow_id)
                    .map_err(|_| WorkflowServiceError::NotFound(workflow_id.into()))?;
                self.orchestrator
                    .store()
                    .get_workflow(id)
                    .await?
                    .ok_or_else(|| WorkflowServiceError::NotFound(workflow_id.into()))?
            }
            Err(e) => return Err(e),
        };
        let parent = detail
            .tasks
            .iter()
            .find(|t| t.id.to_string() == task_id)
            .ok_or_else(|| {
                InvalidWorkflow(format!("task_id: no task `{task_id}` in this workflow"))
            })?;
        self.add_tasks(Creator::Principal(principal), parent, request)
            .await
    }
}

#[async_trait::async_trait]
impl crate::handler::WorkflowChildren for WorkflowService {
    /// A handler's children: created for the principal that created its task, exactly as that
    /// principal's own create would be (`TaskService::creator_of`): a tenant's quota, priority
    /// ceiling, longest timeout, share key and namespace apply.
    async fn add_children(
        &self,
        parent: &Task,
        tasks: Vec<WorkflowTaskSpec>,
    ) -> Result<Vec<Task>, String> {
        let tenant = self
            .tasks
            .creator_of(parent)
            .await
            .map_err(|e| e.to_string())?;
        let subject = parent.created_by.as_deref().unwrap_or("workflow");
        let creator = match &tenant {
            Some(principal) => Creator::Principal(principal),
            None => Creator::Internal(subject),
        };
        self.add_tasks(creator, parent, AddWorkflowTasks { tasks })
            .await
            .map_err(|e| e.to_string())
    }
}
