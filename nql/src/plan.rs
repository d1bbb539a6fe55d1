//! From SQL text to a [`Statement`]: parse with sqlparser (bounded), then translate the
//! supported subset into this crate's own AST with every `$n` bound. Anything outside
//! the grammar is refused here, naming the construct, so the executor only ever sees
//! what it can run.
//!
//! Each parameter is bound once and shared by every `$n` that names it, and literals
//! are shared by the copies planning makes (BETWEEN, ORDER BY an output name): a plan
//! costs memory for its distinct values, not for how often it names them. What it does
//! make is counted against [`MAX_STATEMENT_BYTES`].

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlparser::ast::{
    self, AssignmentTarget, BinaryOperator, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    InTarget, LimitClause, ObjectName, ObjectNamePart, OrderByKind, OrderBySort, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, TableFactor, TableObject, TableWithJoins, UnaryOperator,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Span, Token, Tokenizer};

use crate::budget::{MAX_STATEMENT_BYTES, MAX_VALUE_BYTES, bytes_text, datum_bytes, metadata_bytes, over_value_limit};
use crate::error::{Pos, parser_error, query_error, query_error_at, span_pos, unsupported};
use crate::eval::{self, Datum};
use crate::{DistanceOp, NewRow};
use quiver_common::ApiError;

/// How deep sqlparser may recurse (nested parentheses, subexpressions).
const RECURSION_LIMIT: usize = 50;
/// How deep a translated expression may be (long `a OR b OR …` chains nest too).
const MAX_EXPR_DEPTH: usize = 128;
/// Tokens per statement: long values belong in parameters. This also bounds the
/// depth of operator chains, which sqlparser builds without recursing.
pub const MAX_TOKENS: usize = 10_000;
/// Bytes per statement.
pub const MAX_QUERY_BYTES: usize = 1 << 20;
/// Expression nodes per statement's plan. A statement's own nodes are bounded by its
/// tokens, but some are copied: `x BETWEEN a AND b` tests `x` twice, so a chain of
/// BETWEENs doubles at each link, and an ORDER BY naming an output column repeats its
/// expression. Every row evaluates the plan, so it also bounds the work per row.
const MAX_PLAN_NODES: usize = 100_000;

/// A real column of every collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    Id,
    Content,
    Metadata,
    Embedding,
    CreatedAt,
    UpdatedAt,
}

impl Column {
    pub(crate) const ALL: [Column; 6] = [
        Column::Id,
        Column::Content,
        Column::Metadata,
        Column::Embedding,
        Column::CreatedAt,
        Column::UpdatedAt,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Column::Id => "id",
            Column::Content => "content",
            Column::Metadata => "metadata",
            Column::Embedding => "embedding",
            Column::CreatedAt => "created_at",
            Column::UpdatedAt => "updated_at",
        }
    }

    fn by_name(name: &str) -> Option<Column> {
        Column::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The key of a `->` / `->>` access.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JsonKey {
    Key(String),
    Index(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Concat,
}

impl BinOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            BinOp::Eq => "=",
            BinOp::Ne => "<>",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "AND",
            BinOp::Or => "OR",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Concat => "||",
        }
    }
}

/// An NQL expression, with parameters already bound.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Column(Column),
    /// A metadata key used as a column (`source`): its JSON value, JSON null as NULL.
    MetaKey(String),
    /// `base -> key` (jsonb) or `base ->> key` (text).
    Json {
        base: Box<Expr>,
        key: JsonKey,
        text: bool,
    },
    /// A literal or a parameter's value, shared by every place that names it.
    Lit(Arc<Datum>),
    /// `embedding <op> vector`.
    Distance {
        op: DistanceOp,
        vector: Arc<[f32]>,
    },
    Binary {
        op: BinOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    Not(Box<Expr>),
    Neg(Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: Box<Expr>,
        negated: bool,
        case_insensitive: bool,
        escape: Option<char>,
    },
    /// `COUNT(*)`, only as a whole projection item.
    Count,
    /// `expr::text`: the value as Postgres writes it as text (jsonb as its JSON).
    Text(Box<Expr>),
}

impl Expr {
    /// Nodes in this expression.
    pub(crate) fn size(&self) -> usize {
        1 + match self {
            Expr::Column(_) | Expr::MetaKey(_) | Expr::Lit(_) | Expr::Distance { .. } | Expr::Count => 0,
            Expr::Json { base, .. } => base.size(),
            Expr::Binary { left, right, .. } => left.size() + right.size(),
            Expr::Not(inner) | Expr::Neg(inner) | Expr::IsNull { expr: inner, .. } | Expr::Text(inner) => inner.size(),
            Expr::InList { expr, list, .. } => expr.size() + list.iter().map(Expr::size).sum::<usize>(),
            Expr::Like { expr, pattern, .. } => expr.size() + pattern.size(),
        }
    }

    /// Bytes of text this expression owns, as a copy of it makes them again: metadata
    /// key names (literals and vectors are shared, not copied).
    fn owned_bytes(&self) -> usize {
        match self {
            Expr::MetaKey(key) => key.len(),
            Expr::Column(_) | Expr::Lit(_) | Expr::Distance { .. } | Expr::Count => 0,
            Expr::Json { base, key, .. } => {
                base.owned_bytes()
                    + match key {
                        JsonKey::Key(key) => key.len(),
                        JsonKey::Index(_) => 0,
                    }
            }
            Expr::Binary { left, right, .. } => left.owned_bytes() + right.owned_bytes(),
            Expr::Not(inner) | Expr::Neg(inner) | Expr::IsNull { expr: inner, .. } | Expr::Text(inner) => {
                inner.owned_bytes()
            }
            Expr::InList { expr, list, .. } => expr.owned_bytes() + list.iter().map(Expr::owned_bytes).sum::<usize>(),
            Expr::Like { expr, pattern, .. } => expr.owned_bytes() + pattern.owned_bytes(),
        }
    }
}

/// The collection a statement names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Table {
    pub name: String,
    pub pos: Pos,
}

/// One output column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub name: String,
    pub expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SortKey {
    pub expr: Expr,
    pub desc: bool,
    pub nulls_first: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Select {
    pub table: Table,
    pub items: Vec<Item>,
    pub filter: Option<Expr>,
    pub order: Vec<SortKey>,
    pub limit: Option<u64>,
    pub offset: u64,
    /// Whether the projection is `COUNT(*)` (one row, counting the matches).
    pub aggregate: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Insert {
    pub table: Table,
    pub rows: Vec<NewRow>,
    pub returning_id: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Update {
    pub table: Table,
    pub filter: Option<Expr>,
    pub content: Option<Expr>,
    pub metadata: Option<Expr>,
    pub embedding: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Delete {
    pub table: Table,
    pub filter: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Select(Select),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
}

/// A parsed, bound NQL statement, ready for [`crate::execute`].
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub(crate) kind: Kind,
    /// Every vector in the statement (label, length), for the dimension check.
    pub(crate) vectors: Vec<(String, usize)>,
}

impl Statement {
    /// Whether the statement changes data (INSERT, UPDATE, DELETE): the caller needs
    /// the write scope.
    pub fn is_write(&self) -> bool {
        !matches!(self.kind, Kind::Select(_))
    }

    /// The collection the statement reads or writes.
    pub fn collection(&self) -> &str {
        &self.table().name
    }

    pub(crate) fn table(&self) -> &Table {
        match &self.kind {
            Kind::Select(s) => &s.table,
            Kind::Insert(i) => &i.table,
            Kind::Update(u) => &u.table,
            Kind::Delete(d) => &d.table,
        }
    }
}

/// The stack parsing runs on. sqlparser builds a long operator chain (`1 + 1 + …`, `a
/// OR b OR …`) without recursing, but its syntax tree is dropped recursively, one frame
/// per operator: at the token limit that is thousands of frames, more than a 2 MiB
/// tokio worker (or test) thread has in an unoptimised build. The memory is reserved,
/// not touched, unless a statement needs it.
const PARSE_STACK_BYTES: usize = 64 << 20;

/// Parses one NQL statement and binds `params` to its `$n` placeholders.
///
/// Never panics, whatever the input: sqlparser's recursion is limited, statements are
/// bounded in size, parsing runs on a stack with room for the largest syntax tree
/// allowed, and everything outside the grammar is a `QUERY_ERROR`.
pub fn parse(query: &str, params: &[Value]) -> Result<Statement, ApiError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("nql-parse".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, || parse_here(query, params))
            .map_err(|err| ApiError::Internal(anyhow::anyhow!("starting the NQL parser thread: {err}")))?
            .join()
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("the NQL parser thread panicked")))?
    })
}

fn parse_here(query: &str, params: &[Value]) -> Result<Statement, ApiError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(query_error(format!(
            "the statement is {} bytes long, at most {MAX_QUERY_BYTES} are allowed: pass long values as parameters",
            query.len()
        )));
    }
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, query)
        .tokenize_with_location()
        .map_err(|err| parser_error(query, err.into()))?;
    let significant = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .count();
    if significant > MAX_TOKENS {
        return Err(query_error(format!(
            "the statement has {significant} tokens, at most {MAX_TOKENS} are allowed: pass long values as parameters"
        )));
    }
    let mut statements = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|err| parser_error(query, err))?;
    if statements.len() > 1 {
        return Err(query_error(
            "multiple statements are not supported: send one statement per request",
        ));
    }
    let Some(statement) = statements.pop() else {
        return Err(query_error("the query is empty: send one NQL statement"));
    };
    let mut planner = Planner {
        query,
        params,
        tables: Vec::new(),
        vectors: Vec::new(),
        allow_columns: true,
        nodes: 0,
        bound: HashMap::new(),
        folds: HashMap::new(),
        bytes: 0,
    };
    let kind = planner.statement(statement)?;
    Ok(Statement {
        kind,
        vectors: planner.vectors,
    })
}

struct Planner<'a> {
    query: &'a str,
    params: &'a [Value],
    /// Names a qualified column may start with: the collection and its alias.
    tables: Vec<String>,
    vectors: Vec<(String, usize)>,
    /// False in INSERT values, where there is no row to refer to.
    allow_columns: bool,
    /// Expression nodes made so far, copies included (see [`MAX_PLAN_NODES`]).
    nodes: usize,
    /// Each parameter bound so far (by its 1-based number), bound once: every `$n`
    /// naming it shares the value.
    bound: HashMap<usize, Arc<Datum>>,
    /// Constants made from a literal or parameter (`$1::jsonb`, a `'[1,2]'` read as a
    /// vector), once per source and kind, keyed by the source's address; the source is
    /// kept with its result, so the address cannot be reused by another value.
    folds: HashMap<(usize, Fold), (Arc<Datum>, Arc<Datum>)>,
    /// Bytes of values planned so far, against [`MAX_STATEMENT_BYTES`].
    bytes: usize,
}

/// What a constant is made into while planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fold {
    Vector,
    Jsonb,
    Text,
}

/// The name of an unquoted identifier as Postgres folds it.
fn folded(ident: &ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// The first words of a statement, to name it in "… is not supported".
fn leading_words(query: &str) -> String {
    let words: Vec<&str> = query.split_whitespace().take(2).collect();
    let text = words.join(" ").to_uppercase();
    text.chars()
        .take_while(|c| c.is_ascii_alphabetic() || *c == ' ')
        .collect::<String>()
        .trim()
        .to_owned()
}

impl<'a> Planner<'a> {
    fn pos(&self, span: Span) -> Pos {
        span_pos(self.query, span)
    }

    /// A short excerpt of the query text under `span`, to name a construct.
    fn snippet(&self, span: Span) -> String {
        let (Some(start), Some(end)) = (
            crate::error::char_offset(self.query, span.start.line, span.start.column),
            crate::error::char_offset(self.query, span.end.line, span.end.column),
        ) else {
            return "this expression".to_owned();
        };
        let text: String = self
            .query
            .chars()
            .skip(start.saturating_sub(1))
            .take(end.saturating_sub(start).min(60))
            .collect();
        format!("`{}`", text.trim())
    }

    fn statement(&mut self, statement: ast::Statement) -> Result<Kind, ApiError> {
        match statement {
            ast::Statement::Query(query) => self.select(*query).map(Kind::Select),
            ast::Statement::Insert(insert) => self.insert(insert).map(Kind::Insert),
            ast::Statement::Update(update) => self.update(update).map(Kind::Update),
            ast::Statement::Delete(delete) => self.delete(delete).map(Kind::Delete),
            ast::Statement::Explain { .. } | ast::Statement::ExplainTable { .. } => {
                Err(unsupported("EXPLAIN (send \"explain\": true with the query instead)"))
            }
            _ => {
                let words = leading_words(self.query);
                Err(unsupported(if words.is_empty() {
                    "this statement".to_owned()
                } else {
                    format!("{words} statements")
                }))
            }
        }
    }

    fn table_name(&mut self, name: &ObjectName, alias: Option<&ast::TableAlias>) -> Result<Table, ApiError> {
        let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() else {
            return Err(unsupported("a qualified or computed collection name"));
        };
        // Collection names are used as written: they are Quiver namespace names.
        let table = Table {
            name: ident.value.clone(),
            pos: self.pos(ident.span),
        };
        self.tables.push(folded(ident));
        self.tables.push(ident.value.clone());
        if let Some(alias) = alias {
            if !alias.columns.is_empty() {
                return Err(unsupported("column aliases on a collection"));
            }
            self.tables.push(folded(&alias.name));
        }
        Ok(table)
    }

    fn from(&mut self, from: &[TableWithJoins]) -> Result<Table, ApiError> {
        let [TableWithJoins { relation, joins }] = from else {
            return Err(if from.is_empty() {
                unsupported("SELECT without FROM")
            } else {
                unsupported("reading several collections (joins)")
            });
        };
        if !joins.is_empty() {
            return Err(unsupported("JOIN"));
        }
        match relation {
            TableFactor::Table {
                name,
                alias,
                args: None,
                with_hints,
                version: None,
                partitions,
                sample: None,
                ..
            } if with_hints.is_empty() && partitions.is_empty() => self.table_name(name, alias.as_ref()),
            TableFactor::Derived { .. } => Err(unsupported("subqueries")),
            TableFactor::Table { .. } => Err(unsupported("table functions and hints")),
            _ => Err(unsupported("this kind of FROM item")),
        }
    }

    fn select(&mut self, query: ast::Query) -> Result<Select, ApiError> {
        if query.with.is_some() {
            return Err(unsupported("WITH"));
        }
        if query.fetch.is_some() {
            return Err(unsupported("FETCH"));
        }
        if !query.locks.is_empty() {
            return Err(unsupported("FOR UPDATE / FOR SHARE"));
        }
        if query.for_clause.is_some() || query.settings.is_some() || query.format_clause.is_some() {
            return Err(unsupported("this query clause"));
        }
        if !query.pipe_operators.is_empty() {
            return Err(unsupported("pipe operators"));
        }
        let select = match *query.body {
            SetExpr::Select(select) => select,
            SetExpr::SetOperation { op, .. } => return Err(unsupported(format!("{op}"))),
            SetExpr::Values(_) => return Err(unsupported("a VALUES list as a query")),
            SetExpr::Query(_) => return Err(unsupported("subqueries")),
            _ => return Err(unsupported("this kind of query")),
        };
        let ast::Select {
            distinct,
            top,
            projection,
            exclude,
            into,
            from,
            lateral_views,
            prewhere,
            selection,
            connect_by,
            group_by,
            cluster_by,
            distribute_by,
            sort_by,
            having,
            named_window,
            qualify,
            ..
        } = *select;
        if distinct.is_some() {
            return Err(unsupported("DISTINCT"));
        }
        if top.is_some() {
            return Err(unsupported("TOP"));
        }
        if into.is_some() {
            return Err(unsupported("SELECT INTO"));
        }
        if exclude.is_some() {
            return Err(unsupported("EXCLUDE"));
        }
        match &group_by {
            GroupByExpr::Expressions(exprs, modifiers) if exprs.is_empty() && modifiers.is_empty() => {}
            _ => return Err(unsupported("GROUP BY")),
        }
        if having.is_some() {
            return Err(unsupported("HAVING"));
        }
        if !named_window.is_empty() {
            return Err(unsupported("WINDOW"));
        }
        if !lateral_views.is_empty()
            || prewhere.is_some()
            || !connect_by.is_empty()
            || !cluster_by.is_empty()
            || !distribute_by.is_empty()
            || !sort_by.is_empty()
            || qualify.is_some()
        {
            return Err(unsupported("this SELECT clause"));
        }
        let table = self.from(&from)?;

        let mut items = Vec::new();
        for item in projection {
            match item {
                SelectItem::Wildcard(_) => items.extend(star()),
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
                    if let [ObjectNamePart::Identifier(qualifier)] = name.0.as_slice() {
                        self.qualifier(qualifier)?;
                        items.extend(star());
                    } else {
                        return Err(unsupported("this qualified wildcard"));
                    }
                }
                SelectItem::QualifiedWildcard(..) => return Err(unsupported("this qualified wildcard")),
                SelectItem::UnnamedExpr(expr) => {
                    let expr = self.expr(&expr, 0)?;
                    let name = default_name(&expr);
                    items.push(Item { name, expr });
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let expr = self.expr(&expr, 0)?;
                    items.push(Item {
                        name: folded(&alias),
                        expr,
                    });
                }
                SelectItem::ExprWithAliases { .. } => return Err(unsupported("several aliases for one column")),
            }
        }
        let aggregate = items.iter().any(|i| i.expr == Expr::Count);
        if aggregate {
            if let Some(item) = items.iter().find(|i| i.expr != Expr::Count && !is_constant(&i.expr)) {
                return Err(query_error(format!(
                    "column \"{}\" must appear in the GROUP BY clause or be used in an aggregate function",
                    item.name
                )));
            }
        } else if items.iter().any(|i| contains_count(&i.expr)) {
            return Err(unsupported("COUNT(*) inside an expression"));
        }

        let filter = selection.map(|e| self.expr(&e, 0)).transpose()?;
        if filter.as_ref().is_some_and(contains_count) {
            return Err(query_error("aggregate functions are not allowed in WHERE"));
        }

        let mut order = Vec::new();
        if let Some(order_by) = query.order_by {
            if order_by.interpolate.is_some() {
                return Err(unsupported("INTERPOLATE"));
            }
            let OrderByKind::Expressions(exprs) = order_by.kind else {
                return Err(unsupported("ORDER BY ALL"));
            };
            for key in exprs {
                if key.with_fill.is_some() {
                    return Err(unsupported("WITH FILL"));
                }
                let desc = match key.options.sort {
                    None | Some(OrderBySort::Asc) => false,
                    Some(OrderBySort::Desc) => true,
                    Some(OrderBySort::Using(_)) => return Err(unsupported("ORDER BY … USING")),
                };
                let expr = self.order_expr(&key.expr, &items)?;
                if contains_count(&expr) {
                    return Err(unsupported("ORDER BY an aggregate"));
                }
                order.push(SortKey {
                    expr,
                    desc,
                    // Postgres: NULLS LAST for ascending, NULLS FIRST for descending.
                    nulls_first: key.options.nulls_first.unwrap_or(desc),
                });
            }
        }

        let (limit, offset) = match query.limit_clause {
            None => (None, 0),
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                if !limit_by.is_empty() {
                    return Err(unsupported("LIMIT BY"));
                }
                let limit = limit.map(|l| self.count_value(&l, "LIMIT")).transpose()?.flatten();
                let offset = offset
                    .map(|o| self.count_value(&o.value, "OFFSET"))
                    .transpose()?
                    .flatten()
                    .unwrap_or(0);
                (limit, offset)
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => (
                self.count_value(&limit, "LIMIT")?,
                self.count_value(&offset, "OFFSET")?.unwrap_or(0),
            ),
        };

        Ok(Select {
            table,
            items,
            filter,
            order,
            limit,
            offset,
            aggregate,
        })
    }

    /// An ORDER BY key: an output column's name or position, or an expression.
    fn order_expr(&mut self, expr: &ast::Expr, items: &[Item]) -> Result<Expr, ApiError> {
        match expr {
            ast::Expr::Identifier(ident) => {
                let name = folded(ident);
                if let Some(item) = items.iter().find(|i| i.name == name || i.name == ident.value) {
                    return self.copy(&item.expr);
                }
            }
            ast::Expr::Value(value) => {
                if let ast::Value::Number(n, _) = &value.value {
                    let index: usize = n.parse().unwrap_or(0);
                    return match index.checked_sub(1).and_then(|i| items.get(i)) {
                        Some(item) => self.copy(&item.expr),
                        None => Err(query_error_at(
                            format!("ORDER BY position {n} is not in select list"),
                            self.pos(value.span),
                        )),
                    };
                }
            }
            _ => {}
        }
        self.expr(expr, 0)
    }

    /// A LIMIT or OFFSET value: a non-negative integer, a parameter holding one, or NULL.
    fn count_value(&mut self, expr: &ast::Expr, clause: &str) -> Result<Option<u64>, ApiError> {
        let saved = std::mem::replace(&mut self.allow_columns, false);
        let converted = self.expr(expr, 0);
        self.allow_columns = saved;
        match eval::eval(&converted?, None)?.into_owned() {
            Datum::Null => Ok(None),
            Datum::Int(n) if n >= 0 => Ok(Some(n as u64)),
            Datum::Int(_) => Err(query_error(format!("{clause} must not be negative"))),
            Datum::Num(n) if n >= 0.0 && n.fract() == 0.0 && n < 1.8e19 => Ok(Some(n as u64)),
            other => Err(query_error(format!(
                "argument of {clause} must be a non-negative integer, not {}",
                other.kind()
            ))),
        }
    }

    /// Checks the `t` of `t.column` names the collection.
    fn qualifier(&self, ident: &ast::Ident) -> Result<(), ApiError> {
        if self.tables.contains(&folded(ident)) || self.tables.contains(&ident.value) {
            Ok(())
        } else {
            Err(query_error_at(
                format!("missing FROM-clause entry for table \"{}\"", ident.value),
                self.pos(ident.span),
            ))
        }
    }

    fn column(&mut self, ident: &ast::Ident) -> Result<Expr, ApiError> {
        if !self.allow_columns {
            return Err(query_error_at(
                format!(
                    "cannot use column reference \"{}\" here: use a literal or a $n parameter",
                    ident.value
                ),
                self.pos(ident.span),
            ));
        }
        if let Some(column) = Column::by_name(&folded(ident)) {
            return Ok(Expr::Column(column));
        }
        // Anything else is a metadata key, case and all.
        Ok(Expr::MetaKey(ident.value.clone()))
    }

    fn param(&mut self, name: &str, span: Span) -> Result<Arc<Datum>, ApiError> {
        let index = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n >= 1);
        let Some(index) = index else {
            return Err(query_error_at(
                format!("the placeholder {name} is not supported: use $1, $2, …"),
                self.pos(span),
            ));
        };
        let Some(value) = self.params.get(index - 1) else {
            return Err(query_error_at(
                format!(
                    "there is no parameter ${index}: the request has {} param{}",
                    self.params.len(),
                    if self.params.len() == 1 { "" } else { "s" }
                ),
                self.pos(span),
            ));
        };
        if let Some(datum) = self.bound.get(&index) {
            return Ok(Arc::clone(datum));
        }
        let datum = Datum::from_param(value).map_err(|why| query_error(format!("parameter ${index} {why}")))?;
        self.charge_bytes(datum_bytes(&datum))?;
        let datum = Arc::new(datum);
        self.bound.insert(index, Arc::clone(&datum));
        Ok(datum)
    }

    fn literal(&mut self, value: &ast::ValueWithSpan) -> Result<Arc<Datum>, ApiError> {
        let datum = match &value.value {
            ast::Value::Number(text, _) => Datum::number(text)
                .ok_or_else(|| query_error_at(format!("invalid number {text}"), self.pos(value.span)))?,
            ast::Value::SingleQuotedString(s)
            | ast::Value::EscapedStringLiteral(s)
            | ast::Value::UnicodeStringLiteral(s)
            | ast::Value::NationalStringLiteral(s) => self.text_literal(s, value.span)?,
            ast::Value::DollarQuotedString(s) => self.text_literal(&s.value, value.span)?,
            ast::Value::Boolean(b) => Datum::Bool(*b),
            ast::Value::Null => Datum::Null,
            ast::Value::Placeholder(name) => return self.param(name, value.span),
            ast::Value::DoubleQuotedString(s) => {
                return Err(query_error_at(
                    format!("column \"{s}\" does not exist"),
                    self.pos(value.span),
                ));
            }
            _ => return Err(unsupported(format!("the literal {}", self.snippet(value.span)))),
        };
        self.charge_bytes(datum_bytes(&datum))?;
        Ok(Arc::new(datum))
    }

    /// A string literal, refused past [`MAX_VALUE_BYTES`] as a parameter is.
    fn text_literal(&self, text: &str, span: Span) -> Result<Datum, ApiError> {
        if text.len() > MAX_VALUE_BYTES {
            return Err(query_error_at(
                format!(
                    "the string literal {} {}: use a shorter one",
                    self.snippet(span),
                    over_value_limit()
                ),
                self.pos(span),
            ));
        }
        Ok(Datum::Text(text.to_owned()))
    }

    /// A constant made from `source` (a literal or parameter) by `make`, made once
    /// however often the statement names the source, and counted against
    /// [`MAX_STATEMENT_BYTES`].
    fn fold(
        &mut self,
        source: &Arc<Datum>,
        kind: Fold,
        make: impl FnOnce(&Datum) -> Result<Datum, ApiError>,
    ) -> Result<Arc<Datum>, ApiError> {
        let key = (Arc::as_ptr(source) as usize, kind);
        if let Some((_, made)) = self.folds.get(&key) {
            return Ok(Arc::clone(made));
        }
        let made = make(source)?;
        self.charge_bytes(datum_bytes(&made))?;
        let made = Arc::new(made);
        self.folds.insert(key, (Arc::clone(source), Arc::clone(&made)));
        Ok(made)
    }

    /// A `'[1, 2, 3]'` literal or parameter read as a vector (once), and noted for the
    /// dimension check.
    fn text_vector(&mut self, source: &Arc<Datum>) -> Result<Arc<[f32]>, ApiError> {
        let Datum::Text(text) = &**source else {
            return Err(query_error("only a '[1, 2, 3]' string can be read as a vector"));
        };
        let label = format!("vector '{}'", truncate(text, 30));
        let made = self.fold(source, Fold::Vector, |datum| match datum {
            Datum::Text(text) => Ok(Datum::Vector(eval::parse_vector(text).map_err(query_error)?.into())),
            _ => Err(query_error("only a '[1, 2, 3]' string can be read as a vector")),
        })?;
        let Datum::Vector(vector) = &*made else {
            return Err(query_error("only a '[1, 2, 3]' string can be read as a vector"));
        };
        self.vectors.push((label, vector.len()));
        Ok(Arc::clone(vector))
    }

    /// A vector operand: a vector parameter, or a `'[1, 2, 3]'` string.
    fn vector(&mut self, expr: Expr, label: &str, source: &ast::Expr) -> Result<Arc<[f32]>, ApiError> {
        let wrong = || {
            query_error(format!(
                "the distance operator {label} compares the embedding column with a vector ($n or '[1,2,3]')"
            ))
        };
        let Expr::Lit(lit) = expr else {
            return Err(wrong());
        };
        match &*lit {
            Datum::Vector(v) => {
                let name = match source {
                    ast::Expr::Value(ast::ValueWithSpan {
                        value: ast::Value::Placeholder(name),
                        ..
                    }) => name.clone(),
                    _ => "the vector".to_owned(),
                };
                self.vectors.push((format!("vector {name}"), v.len()));
                Ok(Arc::clone(v))
            }
            Datum::Text(_) => self.text_vector(&lit),
            _ => Err(wrong()),
        }
    }

    /// Counts `more` bytes of planned values against [`MAX_STATEMENT_BYTES`].
    fn charge_bytes(&mut self, more: usize) -> Result<(), ApiError> {
        self.bytes = self.bytes.saturating_add(more);
        if self.bytes > MAX_STATEMENT_BYTES {
            return Err(query_error(format!(
                "the statement's parameters and literals come to more than {} once planned (each parameter \
                 counts once however often it is named; what BETWEEN, ORDER BY an output name and ->/->> keys \
                 copy counts again): pass fewer or smaller values",
                bytes_text(MAX_STATEMENT_BYTES)
            )));
        }
        Ok(())
    }

    /// Counts `more` expression nodes against [`MAX_PLAN_NODES`].
    fn charge(&mut self, more: usize) -> Result<(), ApiError> {
        self.nodes = self.nodes.saturating_add(more);
        if self.nodes > MAX_PLAN_NODES {
            return Err(query_error(format!(
                "the statement's expressions come to more than {MAX_PLAN_NODES} terms (BETWEEN tests its value \
                 twice, an ORDER BY naming an output column repeats it): write it more simply"
            )));
        }
        Ok(())
    }

    /// A copy of `expr`, counted against [`MAX_PLAN_NODES`] and, for the text it
    /// owns, [`MAX_STATEMENT_BYTES`], before it is made.
    fn copy(&mut self, expr: &Expr) -> Result<Expr, ApiError> {
        self.charge(expr.size())?;
        self.charge_bytes(expr.owned_bytes())?;
        Ok(expr.clone())
    }

    fn expr(&mut self, expr: &ast::Expr, depth: usize) -> Result<Expr, ApiError> {
        if depth > MAX_EXPR_DEPTH {
            return Err(query_error(format!(
                "the expression is nested more than {MAX_EXPR_DEPTH} levels deep"
            )));
        }
        self.charge(1)?;
        let d = depth + 1;
        Ok(match expr {
            ast::Expr::Identifier(ident) => self.column(ident)?,
            ast::Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [qualifier, column] => {
                    self.qualifier(qualifier)?;
                    self.column(column)?
                }
                _ => {
                    let name: Vec<&str> = parts.iter().map(|p| p.value.as_str()).collect();
                    return Err(unsupported(format!("the name {}", name.join("."))));
                }
            },
            ast::Expr::Value(value) => Expr::Lit(self.literal(value)?),
            ast::Expr::Nested(inner) => self.expr(inner, d)?,
            ast::Expr::UnaryOp { op, expr: inner } => {
                let inner = self.expr(inner, d)?;
                match op {
                    UnaryOperator::Not => Expr::Not(Box::new(inner)),
                    UnaryOperator::Plus => inner,
                    UnaryOperator::Minus => match inner {
                        Expr::Lit(lit) => match &*lit {
                            Datum::Int(n) if *n != i64::MIN => Expr::Lit(Arc::new(Datum::Int(-n))),
                            Datum::Num(n) => Expr::Lit(Arc::new(Datum::Num(-n))),
                            _ => Expr::Neg(Box::new(Expr::Lit(lit))),
                        },
                        other => Expr::Neg(Box::new(other)),
                    },
                    other => return Err(unsupported(format!("the operator {other}"))),
                }
            }
            ast::Expr::BinaryOp { left, op, right } => self.binary(left, op, right, d)?,
            ast::Expr::IsNull(inner) => Expr::IsNull {
                expr: Box::new(self.expr(inner, d)?),
                negated: false,
            },
            ast::Expr::IsNotNull(inner) => Expr::IsNull {
                expr: Box::new(self.expr(inner, d)?),
                negated: true,
            },
            ast::Expr::In {
                expr: inner,
                target,
                negated,
                ..
            } => match target {
                InTarget::List(list) => Expr::InList {
                    expr: Box::new(self.expr(inner, d)?),
                    list: list.iter().map(|e| self.expr(e, d)).collect::<Result<_, _>>()?,
                    negated: *negated,
                },
                InTarget::Subquery(_) => return Err(unsupported("subqueries")),
                _ => return Err(unsupported("this kind of IN")),
            },
            ast::Expr::Between {
                expr: inner,
                negated,
                low,
                high,
            } => {
                let inner = self.expr(inner, d)?;
                let range = Expr::Binary {
                    op: BinOp::And,
                    left: Box::new(Expr::Binary {
                        op: BinOp::Ge,
                        left: Box::new(self.copy(&inner)?),
                        right: Box::new(self.expr(low, d)?),
                    }),
                    right: Box::new(Expr::Binary {
                        op: BinOp::Le,
                        left: Box::new(inner),
                        right: Box::new(self.expr(high, d)?),
                    }),
                };
                if *negated { Expr::Not(Box::new(range)) } else { range }
            }
            ast::Expr::Like {
                negated,
                any,
                expr: inner,
                pattern,
                escape_char,
            }
            | ast::Expr::ILike {
                negated,
                any,
                expr: inner,
                pattern,
                escape_char,
            } => {
                if *any {
                    return Err(unsupported("LIKE ANY"));
                }
                let escape = match escape_char {
                    None => Some('\\'),
                    Some(e) => {
                        let escape = self.expr(e, d)?;
                        let mut chars = match &escape {
                            Expr::Lit(lit) => match &**lit {
                                Datum::Text(s) => s.chars(),
                                _ => return Err(query_error("invalid escape string: it must be one character")),
                            },
                            _ => return Err(query_error("invalid escape string: it must be one character")),
                        };
                        match (chars.next(), chars.next()) {
                            (None, _) => None,
                            (Some(c), None) => Some(c),
                            _ => return Err(query_error("invalid escape string: it must be one character")),
                        }
                    }
                };
                Expr::Like {
                    expr: Box::new(self.expr(inner, d)?),
                    pattern: Box::new(self.expr(pattern, d)?),
                    negated: *negated,
                    case_insensitive: matches!(expr, ast::Expr::ILike { .. }),
                    escape,
                }
            }
            ast::Expr::Function(function) => self.function(function)?,
            ast::Expr::Cast {
                expr: inner, data_type, ..
            } => {
                let inner = self.expr(inner, d)?;
                // Matched structurally: displaying a type recurses through `[]` nesting.
                let target = match data_type {
                    ast::DataType::Custom(name, modifiers)
                        if modifiers.is_empty() && name.to_string().eq_ignore_ascii_case("vector") =>
                    {
                        "vector"
                    }
                    ast::DataType::JSONB | ast::DataType::JSON => "jsonb",
                    ast::DataType::Text => "text",
                    _ => return Err(unsupported("this cast: only ::vector, ::jsonb and ::text")),
                };
                // Casts of a literal or parameter are made once, however often the
                // statement names it.
                let lit = match inner {
                    Expr::Lit(lit) => lit,
                    other if target == "text" => return Ok(Expr::Text(Box::new(other))),
                    _ => return Err(unsupported(format!("a cast to {target} of anything but a literal"))),
                };
                let (text, vector, json) = (
                    matches!(*lit, Datum::Text(_)),
                    matches!(*lit, Datum::Vector(_)),
                    matches!(*lit, Datum::Json(_)),
                );
                match target {
                    "vector" if text => Expr::Lit(Arc::new(Datum::Vector(self.text_vector(&lit)?))),
                    "vector" if vector => Expr::Lit(lit),
                    "jsonb" if text => Expr::Lit(self.fold(&lit, Fold::Jsonb, |datum| {
                        match datum {
                            Datum::Text(text) => serde_json::from_str(text)
                                .map(Datum::Json)
                                .map_err(|e| query_error(format!("invalid input syntax for type json: {e}"))),
                            _ => Err(unsupported("a cast to jsonb of anything but a string")),
                        }
                    })?),
                    "jsonb" if json => Expr::Lit(lit),
                    "text" => Expr::Lit(self.fold(&lit, Fold::Text, |datum| {
                        eval::bounded(datum.cast_text(), "the text of a ::text cast", "cast a smaller value")
                    })?),
                    _ => return Err(unsupported(format!("a cast to {target} of anything but a literal"))),
                }
            }
            ast::Expr::Subquery(_) | ast::Expr::Exists { .. } => return Err(unsupported("subqueries")),
            ast::Expr::Case { .. } => return Err(unsupported("CASE")),
            other => return Err(unsupported(construct_name(other))),
        })
    }

    fn binary(
        &mut self,
        left: &ast::Expr,
        op: &BinaryOperator,
        right: &ast::Expr,
        depth: usize,
    ) -> Result<Expr, ApiError> {
        let distance = match op {
            BinaryOperator::Spaceship => Some(DistanceOp::Cosine),
            BinaryOperator::LtDashGt => Some(DistanceOp::L2),
            BinaryOperator::Custom(custom) if custom == "<#>" => Some(DistanceOp::NegativeInner),
            _ => None,
        };
        let l = self.expr(left, depth)?;
        let r = self.expr(right, depth)?;
        if let Some(op) = distance {
            let vector = match (l, r) {
                (Expr::Column(Column::Embedding), other) => self.vector(other, op.symbol(), right)?,
                (other, Expr::Column(Column::Embedding)) => self.vector(other, op.symbol(), left)?,
                _ => {
                    return Err(query_error(format!(
                        "the distance operator {} compares the embedding column with a vector ($n or '[1,2,3]')",
                        op.symbol()
                    )));
                }
            };
            return Ok(Expr::Distance { op, vector });
        }
        if matches!(op, BinaryOperator::Arrow | BinaryOperator::LongArrow) {
            let text = matches!(op, BinaryOperator::LongArrow);
            if !is_json(&l) {
                return Err(query_error(format!(
                    "operator does not exist: {} {op} unknown: -> and ->> apply to metadata",
                    type_name(&l)
                )));
            }
            let key = match &r {
                Expr::Lit(lit) => match &**lit {
                    Datum::Text(key) => {
                        // The key is copied out of a value others may share.
                        self.charge_bytes(key.len())?;
                        Some(JsonKey::Key(key.clone()))
                    }
                    Datum::Int(index) => Some(JsonKey::Index(*index)),
                    _ => None,
                },
                _ => None,
            };
            let Some(key) = key else {
                return Err(query_error(format!(
                    "the right side of {op} must be a key string or an index"
                )));
            };
            return Ok(Expr::Json {
                base: Box::new(l),
                key,
                text,
            });
        }
        let op = match op {
            BinaryOperator::Eq => BinOp::Eq,
            BinaryOperator::NotEq => BinOp::Ne,
            BinaryOperator::Lt => BinOp::Lt,
            BinaryOperator::LtEq => BinOp::Le,
            BinaryOperator::Gt => BinOp::Gt,
            BinaryOperator::GtEq => BinOp::Ge,
            BinaryOperator::And => BinOp::And,
            BinaryOperator::Or => BinOp::Or,
            BinaryOperator::Plus => BinOp::Add,
            BinaryOperator::Minus => BinOp::Sub,
            BinaryOperator::Multiply => BinOp::Mul,
            BinaryOperator::Divide => BinOp::Div,
            BinaryOperator::Modulo => BinOp::Mod,
            BinaryOperator::StringConcat => BinOp::Concat,
            other => return Err(unsupported(format!("the operator {other}"))),
        };
        Ok(Expr::Binary {
            op,
            left: Box::new(l),
            right: Box::new(r),
        })
    }

    fn function(&mut self, function: &ast::Function) -> Result<Expr, ApiError> {
        let name = function.name.to_string().to_lowercase();
        if name != "count" {
            return Err(unsupported(format!("the function {name}()")));
        }
        let star = match &function.args {
            FunctionArguments::List(list) => {
                list.duplicate_treatment.is_none()
                    && list.clauses.is_empty()
                    && matches!(list.args.as_slice(), [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)])
            }
            _ => false,
        };
        if !star || function.over.is_some() || function.filter.is_some() || !function.within_group.is_empty() {
            return Err(unsupported("COUNT other than COUNT(*)"));
        }
        Ok(Expr::Count)
    }

    fn insert(&mut self, insert: ast::Insert) -> Result<Insert, ApiError> {
        let TableObject::TableName(name) = &insert.table else {
            return Err(unsupported("INSERT into a table function"));
        };
        let table = self.table_name(name, None)?;
        if insert.or.is_some() || insert.ignore || insert.overwrite || insert.replace_into {
            return Err(unsupported("this INSERT variant"));
        }
        if insert.on.is_some() {
            return Err(unsupported("ON CONFLICT"));
        }
        if !insert.assignments.is_empty() || insert.partitioned.is_some() || !insert.after_columns.is_empty() {
            return Err(unsupported("this INSERT clause"));
        }
        let mut columns = Vec::new();
        for column in &insert.columns {
            let [ObjectNamePart::Identifier(ident)] = column.0.as_slice() else {
                return Err(unsupported("qualified INSERT column names"));
            };
            let name = folded(ident);
            let column = match Column::by_name(&name) {
                Some(c @ (Column::Id | Column::Content | Column::Metadata | Column::Embedding)) => c,
                Some(c) => {
                    return Err(query_error_at(
                        format!("column \"{}\" cannot be set: Quiver maintains it", c.name()),
                        self.pos(ident.span),
                    ));
                }
                None => {
                    return Err(query_error_at(
                        format!("column \"{name}\" of relation \"{}\" does not exist", table.name),
                        self.pos(ident.span),
                    ));
                }
            };
            if columns.contains(&column) {
                return Err(query_error_at(
                    format!("column \"{name}\" specified more than once"),
                    self.pos(ident.span),
                ));
            }
            columns.push(column);
        }
        if columns.is_empty() {
            columns = vec![Column::Id, Column::Content, Column::Metadata, Column::Embedding];
        }
        let Some(source) = insert.source else {
            return Err(unsupported("INSERT without VALUES"));
        };
        if source.with.is_some() || source.order_by.is_some() || source.limit_clause.is_some() {
            return Err(unsupported("this INSERT source"));
        }
        let SetExpr::Values(values) = *source.body else {
            return Err(unsupported("INSERT … SELECT"));
        };
        self.allow_columns = false;
        let mut rows = Vec::with_capacity(values.rows.len());
        // Bytes of the rows made so far: each holds its own copy of its values.
        let mut inserted = 0usize;
        for (index, row) in values.rows.iter().enumerate() {
            let exprs = &row.content;
            if exprs.len() > columns.len() {
                return Err(query_error("INSERT has more expressions than target columns"));
            }
            if exprs.len() < columns.len() {
                return Err(query_error("INSERT has more target columns than expressions"));
            }
            let mut new = NewRow {
                id: None,
                content: None,
                metadata: Map::new(),
                embedding: None,
            };
            for (column, expr) in columns.iter().zip(exprs) {
                let value = self.expr(expr, 0)?;
                // A copy, even of a shared parameter: a row owns its values.
                let datum = eval::eval(&value, None)?.into_owned();
                let row_label = format!("row {}", index + 1);
                match column {
                    Column::Id => new.id = id_value(datum, &row_label)?,
                    Column::Content => new.content = content_value(datum, &row_label)?,
                    Column::Metadata => new.metadata = metadata_value(datum, &row_label)?.unwrap_or_default(),
                    Column::Embedding => {
                        new.embedding = embedding_value(datum, &row_label)?;
                        if let Some(v) = &new.embedding {
                            self.vectors.push((format!("the embedding of {row_label}"), v.len()));
                        }
                    }
                    Column::CreatedAt | Column::UpdatedAt => {}
                }
            }
            inserted = inserted.saturating_add(new_row_bytes(&new));
            if inserted > MAX_STATEMENT_BYTES {
                return Err(query_error(format!(
                    "the INSERT's rows come to more than {}, the most one statement writes: insert them in \
                     several statements",
                    bytes_text(MAX_STATEMENT_BYTES)
                )));
            }
            rows.push(new);
        }
        self.allow_columns = true;
        let returning_id = match &insert.returning {
            None => false,
            Some(items) => match items.as_slice() {
                [SelectItem::UnnamedExpr(ast::Expr::Identifier(ident))] if folded(ident) == "id" => true,
                _ => return Err(unsupported("RETURNING anything but id")),
            },
        };
        Ok(Insert {
            table,
            rows,
            returning_id,
        })
    }

    fn update(&mut self, update: ast::Update) -> Result<Update, ApiError> {
        if update.from.is_some() {
            return Err(unsupported("UPDATE … FROM"));
        }
        if update.returning.is_some() {
            return Err(unsupported("RETURNING on UPDATE"));
        }
        if !update.order_by.is_empty() || update.limit.is_some() || update.or.is_some() {
            return Err(unsupported("this UPDATE clause"));
        }
        let table = self.from(std::slice::from_ref(&update.table))?;
        let mut plan = Update {
            table,
            filter: None,
            content: None,
            metadata: None,
            embedding: None,
        };
        for assignment in &update.assignments {
            let AssignmentTarget::ColumnName(name) = &assignment.target else {
                return Err(unsupported("tuple assignments"));
            };
            let ident = match name.0.as_slice() {
                [ObjectNamePart::Identifier(ident)] => ident,
                [ObjectNamePart::Identifier(qualifier), ObjectNamePart::Identifier(ident)] => {
                    self.qualifier(qualifier)?;
                    ident
                }
                _ => return Err(unsupported("this assignment target")),
            };
            let column = folded(ident);
            let value = self.expr(&assignment.value, 0)?;
            let slot = match Column::by_name(&column) {
                Some(Column::Content) => &mut plan.content,
                Some(Column::Metadata) => &mut plan.metadata,
                Some(Column::Embedding) => &mut plan.embedding,
                Some(c) => {
                    return Err(query_error_at(
                        format!("column \"{}\" cannot be updated", c.name()),
                        self.pos(ident.span),
                    ));
                }
                None => {
                    return Err(query_error_at(
                        format!(
                            "column \"{column}\" of relation \"{}\" does not exist: set metadata = metadata || $1 to change a metadata key",
                            plan.table.name
                        ),
                        self.pos(ident.span),
                    ));
                }
            };
            if slot.is_some() {
                return Err(query_error_at(
                    format!("multiple assignments to same column \"{column}\""),
                    self.pos(ident.span),
                ));
            }
            *slot = Some(value);
        }
        plan.filter = update.selection.map(|e| self.expr(&e, 0)).transpose()?;
        Ok(plan)
    }

    fn delete(&mut self, delete: ast::Delete) -> Result<Delete, ApiError> {
        if !delete.tables.is_empty() || delete.using.is_some() {
            return Err(unsupported("DELETE from several collections (USING)"));
        }
        if delete.returning.is_some() {
            return Err(unsupported("RETURNING on DELETE"));
        }
        if !delete.order_by.is_empty() || delete.limit.is_some() {
            return Err(unsupported("this DELETE clause"));
        }
        let from = match &delete.from {
            FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => from,
        };
        let table = self.from(from)?;
        let filter = delete.selection.map(|e| self.expr(&e, 0)).transpose()?;
        Ok(Delete { table, filter })
    }
}

/// Names an expression outside the grammar without walking it (it may be deep).
fn construct_name(expr: &ast::Expr) -> &'static str {
    use ast::Expr as E;
    match expr {
        E::IsTrue(_) | E::IsNotTrue(_) | E::IsFalse(_) | E::IsNotFalse(_) => "IS TRUE / IS FALSE",
        E::IsUnknown(_) | E::IsNotUnknown(_) => "IS UNKNOWN",
        E::IsDistinctFrom(..) | E::IsNotDistinctFrom(..) => "IS DISTINCT FROM",
        E::SimilarTo { .. } => "SIMILAR TO",
        E::RLike { .. } => "regular expression matching",
        E::AnyOp { .. } | E::AllOp { .. } => "ANY / ALL",
        E::Extract { .. } => "EXTRACT",
        E::Substring { .. } | E::Trim { .. } | E::Position { .. } | E::Overlay { .. } => "string functions",
        E::Ceil { .. } | E::Floor { .. } => "CEIL / FLOOR",
        E::Collate { .. } => "COLLATE",
        E::AtTimeZone { .. } => "AT TIME ZONE",
        E::TypedString(_) => "typed literals (write '2024-01-01' without the type)",
        E::Interval(_) => "INTERVAL",
        E::Array(_) => "ARRAY constructors (pass vectors as $n or '[1,2,3]')",
        E::Tuple(_) => "row constructors",
        E::CompoundFieldAccess { .. } | E::JsonAccess { .. } => "this field access (use metadata->'key')",
        E::Wildcard(_) | E::QualifiedWildcard(..) => "* here",
        _ => "this expression",
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

fn star() -> impl Iterator<Item = Item> {
    Column::ALL.into_iter().map(|c| Item {
        name: c.name().to_owned(),
        expr: Expr::Column(c),
    })
}

/// The name Postgres gives an unaliased output column.
fn default_name(expr: &Expr) -> String {
    match expr {
        Expr::Column(c) => c.name().to_owned(),
        Expr::MetaKey(key) => key.clone(),
        Expr::Count => "count".to_owned(),
        // A cast takes the name of what it casts, else its type's.
        Expr::Text(inner) => match default_name(inner).as_str() {
            "?column?" => "text".to_owned(),
            name => name.to_owned(),
        },
        _ => "?column?".to_owned(),
    }
}

fn is_json(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::Column(Column::Metadata) | Expr::MetaKey(_) | Expr::Json { text: false, .. }
    )
}

fn type_name(expr: &Expr) -> &'static str {
    match crate::eval::type_oid(expr) {
        25 => "text",
        2950 => "uuid",
        1021 => "real[]",
        1184 => "timestamp with time zone",
        701 => "double precision",
        20 => "bigint",
        16 => "boolean",
        _ => "jsonb",
    }
}

fn is_constant(expr: &Expr) -> bool {
    matches!(expr, Expr::Lit(_))
}

pub(crate) fn contains_count(expr: &Expr) -> bool {
    match expr {
        Expr::Count => true,
        Expr::Json { base, .. } => contains_count(base),
        Expr::Binary { left, right, .. } => contains_count(left) || contains_count(right),
        Expr::Not(e) | Expr::Neg(e) | Expr::IsNull { expr: e, .. } | Expr::Text(e) => contains_count(e),
        Expr::InList { expr, list, .. } => contains_count(expr) || list.iter().any(contains_count),
        Expr::Like { expr, pattern, .. } => contains_count(expr) || contains_count(pattern),
        Expr::Column(_) | Expr::MetaKey(_) | Expr::Lit(_) | Expr::Distance { .. } => false,
    }
}

fn id_value(datum: Datum, row: &str) -> Result<Option<String>, ApiError> {
    match datum {
        Datum::Null => Ok(None),
        Datum::Text(s) if s.is_empty() => Err(query_error(format!("{row}: id must not be empty"))),
        Datum::Text(s) => Ok(Some(s)),
        Datum::Int(n) => Ok(Some(n.to_string())),
        other => Err(query_error(format!("{row}: id must be a string, not {}", other.kind()))),
    }
}

pub(crate) fn content_value(datum: Datum, row: &str) -> Result<Option<String>, ApiError> {
    match datum {
        Datum::Null => Ok(None),
        Datum::Text(s) => Ok(Some(s)),
        Datum::Json(Value::String(s)) => Ok(Some(s)),
        other => Err(query_error(format!(
            "{row}: content must be a string, not {}",
            other.kind()
        ))),
    }
}

pub(crate) fn metadata_value(datum: Datum, row: &str) -> Result<Option<Map<String, Value>>, ApiError> {
    match datum {
        Datum::Null => Ok(None),
        Datum::Json(Value::Object(map)) => Ok(Some(map)),
        Datum::Text(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => Ok(Some(map)),
            Ok(other) => Err(query_error(format!(
                "{row}: metadata must be a JSON object, not {}",
                quiver_common::error::json_kind(&other)
            ))),
            Err(err) => Err(query_error(format!("{row}: invalid input syntax for type json: {err}"))),
        },
        other => Err(query_error(format!(
            "{row}: metadata must be a JSON object, not {}",
            other.kind()
        ))),
    }
}

pub(crate) fn embedding_value(datum: Datum, row: &str) -> Result<Option<Vec<f32>>, ApiError> {
    match datum {
        Datum::Null => Ok(None),
        Datum::Vector(v) => Ok(Some(v.to_vec())),
        Datum::Text(text) => eval::parse_vector(&text)
            .map(Some)
            .map_err(|why| query_error(format!("{row}: {why}"))),
        other => Err(query_error(format!(
            "{row}: embedding must be an array of numbers or a '[1,2,3]' string, not {}",
            other.kind()
        ))),
    }
}

/// About the memory a row to insert takes.
fn new_row_bytes(row: &NewRow) -> usize {
    size_of::<NewRow>()
        + row.id.as_ref().map_or(0, String::len)
        + row.content.as_ref().map_or(0, String::len)
        + metadata_bytes(&row.metadata)
        + row.embedding.as_ref().map_or(0, |v| v.len() * 4)
}

/// Parses an RFC 3339 timestamp, or `YYYY-MM-DD[ HH:MM:SS]` in UTC.
pub(crate) fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}
