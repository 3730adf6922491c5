//! What the reconciler reads and writes in PostgreSQL: the orders and refunds that are due
//! for a query, and the one write it does itself (closing an unpaid order WeChat Pay
//! closed). Payments and refunds found by a query are never written here: they go through
//! the queue and the worker's one apply path.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use wxpay_shared::state::{OrderState, RefundState};

use super::query::Record;
use crate::db::schema::{orders, refunds};
use crate::db::{pool_error_text, DbPool};

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Pool(String),
    #[error("database: {0}")]
    Query(#[from] diesel::result::Error),
}

/// An order to ask WeChat Pay about (fields in the order [`due_orders`] selects them).
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct DueOrder {
    pub out_trade_no: String,
    /// The service provider's sub-merchant; empty for a direct merchant.
    pub sub_mch_id: String,
    pub appid: String,
    /// The combine payment (合单支付) the order is a sub order of: asked about through the
    /// combine query instead of the order's own.
    pub combine_out_trade_no: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A refund to ask WeChat Pay about (fields in the order [`due_refunds`] selects them).
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct DueRefund {
    pub out_refund_no: String,
    pub sub_mch_id: String,
    pub out_trade_no: String,
    /// The refunded order's appid (v2 queries need one); `None` when the order is unknown.
    pub appid: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Keyset position: rows strictly after `(created_at, number, sub_mch_id)` come next (two
/// sub-merchants of a provider may share a number).
pub type Cursor = (DateTime<Utc>, String, String);

/// A due row, paged by keyset: its position in `(created_at, number, sub_mch_id)` order.
pub trait Due {
    fn cursor(&self) -> Cursor;
}

impl Due for DueOrder {
    fn cursor(&self) -> Cursor {
        let (number, sub_mch_id) = (self.out_trade_no.clone(), self.sub_mch_id.clone());
        (self.created_at, number, sub_mch_id)
    }
}

impl Due for DueRefund {
    fn cursor(&self) -> Cursor {
        let (number, sub_mch_id) = (self.out_refund_no.clone(), self.sub_mch_id.clone());
        (self.created_at, number, sub_mch_id)
    }
}

/// `$query` over `$table` as one keyset page: in `(created_at, $number, sub_mch_id)` order,
/// the rows of `$page` (a `&Page`). One paging for orders and refunds, whose columns are
/// distinct types.
macro_rules! keyset_page {
    ($query:expr, $table:ident, $number:ident, $page:expr) => {{
        let page: &Page = $page;
        let mut query = $query
            .order_by((
                $table::created_at.asc(),
                $table::$number.asc(),
                $table::sub_mch_id.asc(),
            ))
            .limit(page.limit)
            .into_boxed();
        if let Some((at, number, sub_mch_id)) = &page.cursor {
            query = query.filter(
                $table::created_at
                    .gt(*at)
                    .or($table::created_at.eq(*at).and(
                        $table::$number.gt(number.clone()).or($table::$number
                            .eq(number.clone())
                            .and($table::sub_mch_id.gt(sub_mch_id.clone()))),
                    )),
            );
        }
        query
    }};
}

async fn conn(pool: &DbPool) -> Result<crate::db::DbConn, StoreError> {
    pool.get()
        .await
        .map_err(|error| StoreError::Pool(pool_error_text(&error)))
}

/// Which page of a merchant's due rows to read: those of `mch_id` after `cursor` (from the
/// first when `None`), at most `limit`.
#[derive(Debug, Clone)]
pub struct Page<'a> {
    pub mch_id: &'a str,
    pub cursor: Option<Cursor>,
    pub limit: i64,
}

/// The `page` of the merchant's `NOTPAY` orders created in `(newer_than, older_than)`,
/// oldest first.
pub async fn due_orders(
    pool: &DbPool,
    page: Page<'_>,
    (newer_than, older_than): (DateTime<Utc>, DateTime<Utc>),
) -> Result<Vec<DueOrder>, StoreError> {
    let mut conn = conn(pool).await?;
    let due = orders::table
        .filter(orders::mch_id.eq(page.mch_id))
        .filter(orders::state.eq(OrderState::NotPay.as_str()))
        .filter(orders::created_at.gt(newer_than))
        .filter(orders::created_at.lt(older_than))
        .select((
            orders::out_trade_no,
            orders::sub_mch_id,
            orders::appid,
            orders::combine_out_trade_no,
            orders::created_at,
        ));
    let query = keyset_page!(due, orders, out_trade_no, &page);
    Ok(query.load::<DueOrder>(&mut conn).await?)
}

/// The `page` of the merchant's `PROCESSING` refunds created before `older_than`, oldest
/// first. No horizon: a refund can stay processing for days (bank cards), and one that
/// never finishes must keep showing up in the error metrics.
pub async fn due_refunds(
    pool: &DbPool,
    page: Page<'_>,
    older_than: DateTime<Utc>,
) -> Result<Vec<DueRefund>, StoreError> {
    let mut conn = conn(pool).await?;
    let due = refunds::table
        .left_join(
            orders::table.on(orders::mch_id
                .eq(refunds::mch_id)
                .and(orders::sub_mch_id.eq(refunds::sub_mch_id))
                .and(orders::out_trade_no.eq(refunds::out_trade_no))),
        )
        .filter(refunds::mch_id.eq(page.mch_id))
        .filter(refunds::status.eq(RefundState::Processing.as_str()))
        .filter(refunds::created_at.lt(older_than))
        .select((
            refunds::out_refund_no,
            refunds::sub_mch_id,
            refunds::out_trade_no,
            orders::appid.nullable(),
            refunds::created_at,
        ));
    let query = keyset_page!(due, refunds, out_refund_no, &page);
    Ok(query.load::<DueRefund>(&mut conn).await?)
}

/// Whether the order is still `NOTPAY` / the refund still `PROCESSING` (`false` once it
/// moved on, or when there is no such row): one read for either kind of `record`.
pub async fn still_due(
    pool: &DbPool,
    record: Record,
    (mch_id, sub_mch_id): (&str, &str),
    number: &str,
) -> Result<bool, StoreError> {
    let mut conn = conn(pool).await?;
    let key = (mch_id, sub_mch_id, number);
    let (read, due) = match record {
        Record::Order => {
            let read = orders::table.find(key).select(orders::state);
            (
                read.first::<String>(&mut conn).await,
                OrderState::NotPay.as_str(),
            )
        }
        Record::Refund => {
            let read = refunds::table.find(key).select(refunds::status);
            (
                read.first(&mut conn).await,
                RefundState::Processing.as_str(),
            )
        }
    };
    Ok(read.optional()?.is_some_and(|state| state == due))
}

/// `NOTPAY → CLOSED`, guarded: an order paid meanwhile (the worker holds the row lock while
/// it applies) is left alone. Moves no money, so no notification row and no outbox event.
/// `true` when the order was closed by this call.
pub async fn close_unpaid(
    pool: &DbPool,
    (mch_id, sub_mch_id): (&str, &str),
    out_trade_no: &str,
) -> Result<bool, StoreError> {
    let mut conn = conn(pool).await?;
    let updated = diesel::update(
        orders::table
            .filter(orders::mch_id.eq(mch_id))
            .filter(orders::sub_mch_id.eq(sub_mch_id))
            .filter(orders::out_trade_no.eq(out_trade_no))
            .filter(orders::state.eq(OrderState::NotPay.as_str())),
    )
    .set((
        orders::state.eq(OrderState::Closed.as_str()),
        orders::updated_at.eq(diesel::dsl::now),
    ))
    .execute(&mut conn)
    .await?;
    Ok(updated == 1)
}
