-- kagoflow archive schema (SPEC §8). Idempotent: tables are created if missing, views are re-created.
-- Runs on ClickHouse 18.16 and on current releases, so it keeps to what 18.16 has: no DateTime64,
-- no CTEs, no window functions, no JSON functions, one JOIN per SELECT (nested subqueries each have
-- at most one), explicit ANY/ALL join strictness.
--
-- Loss-free and duplicate-free: the archiver commits Kafka offsets only after a batch is stored, so a
-- crash replays rows. Every table is a ReplacingMergeTree whose sorting key identifies a record
-- (beacons: event_id; upsert topics: Kafka partition + offset; decisions: decision key + status), and
-- every partition key derives from the record's own time, so a replayed row lands in the same partition
-- and collapses with its twin. Merges collapse eventually; the v_* views read with FINAL and are exact now.
-- Times: *_ms columns are the exact epoch milliseconds; DateTime columns (UTC) are derived from them.
-- Analytics days are shop-local days: 'Asia/Tokyo' below is replaced by KAGOFLOW_SHOP_TIMEZONE when applied,
-- and `kagoflow` by KAGOFLOW_CLICKHOUSE_DATABASE (kagoflow.adapters.clickhouse.schema_statements).
-- Statements are separated by a semicolon at the end of a line (kagoflow.adapters.clickhouse splits there).

CREATE DATABASE IF NOT EXISTS kagoflow;

CREATE TABLE IF NOT EXISTS kagoflow.beacons
(
    ts_ms Int64,
    ts DateTime('UTC') DEFAULT toDateTime(intDiv(ts_ms, 1000), 'UTC'),
    date Date DEFAULT toDate(toDateTime(intDiv(ts_ms, 1000), 'UTC')),
    event_id String,
    member_id String,
    type String,
    product_id String,
    product_ids Array(String),
    order_id String,
    price Nullable(Float64),
    quantity Nullable(UInt32),
    device String,
    shop_id String,
    kafka_partition UInt16,
    kafka_offset UInt64,
    archived_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (member_id, event_id);

-- Profile fields of SPEC §13 (added later: last, so an older table gets them from ensure_schema, which adds
-- missing columns since 18.16 has no ADD COLUMN IF NOT EXISTS): birthday 'YYYY-MM-DD' as text (Date of 18.16
-- starts in 1970), gender female | male | other, registered_at in seconds.
CREATE TABLE IF NOT EXISTS kagoflow.members
(
    ts_ms Int64,
    ts DateTime('UTC') DEFAULT toDateTime(intDiv(ts_ms, 1000), 'UTC'),
    date Date DEFAULT toDate(toDateTime(intDiv(ts_ms, 1000), 'UTC')),
    member_id String,
    email String,
    opt_in UInt8,
    name Nullable(String),
    device String,
    locale Nullable(String),
    purchase_count Nullable(UInt32),
    kafka_partition UInt16,
    kafka_offset UInt64,
    archived_at DateTime('UTC') DEFAULT now(),
    birthday Nullable(String),
    gender Nullable(String),
    registered_at Nullable(DateTime('UTC'))
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (member_id, kafka_partition, kafka_offset);

CREATE TABLE IF NOT EXISTS kagoflow.catalog
(
    ts_ms Int64,
    ts DateTime('UTC') DEFAULT toDateTime(intDiv(ts_ms, 1000), 'UTC'),
    date Date DEFAULT toDate(toDateTime(intDiv(ts_ms, 1000), 'UTC')),
    product_id String,
    price Float64,
    stock UInt32,
    name Nullable(String),
    url Nullable(String),
    image_url Nullable(String),
    on_sale Nullable(UInt8),
    kafka_partition UInt16,
    kafka_offset UInt64,
    archived_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (product_id, kafka_partition, kafka_offset);

CREATE TABLE IF NOT EXISTS kagoflow.orders
(
    ts_ms Int64,
    ts DateTime('UTC') DEFAULT toDateTime(intDiv(ts_ms, 1000), 'UTC'),
    date Date DEFAULT toDate(toDateTime(intDiv(ts_ms, 1000), 'UTC')),
    order_id String,
    member_id String,
    status String,
    ordered_at DateTime('UTC'),
    shipped_at Nullable(DateTime('UTC')),
    delivered_at Nullable(DateTime('UTC')),
    item_product_ids Array(String),
    item_quantities Array(UInt32),
    item_prices Array(Float64),
    coupon String,
    total Nullable(Float64),
    kafka_partition UInt16,
    kafka_offset UInt64,
    archived_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (member_id, order_id, kafka_partition, kafka_offset);

-- One row per mail decision. A replay may decide again at another wall-clock moment, so neither `at`
-- nor the Kafka offset identifies it: decision key + status does, and the partition follows `due`.
CREATE TABLE IF NOT EXISTS kagoflow.mail_decisions
(
    decision_key String,
    member_id String,
    rule_id String,
    kind String,
    status String,
    reason String,
    products Array(String),
    at_ms Int64,
    due_ms Int64,
    at DateTime('UTC') DEFAULT toDateTime(intDiv(at_ms, 1000), 'UTC'),
    due DateTime('UTC') DEFAULT toDateTime(intDiv(due_ms, 1000), 'UTC'),
    date Date DEFAULT toDate(toDateTime(intDiv(due_ms, 1000), 'UTC')),
    episode String,
    template String,
    coupon String,
    sender_name String,
    cap_exempt UInt8,
    step UInt8,
    variant String,
    send UInt8 DEFAULT 0,
    order_id String DEFAULT '',
    kafka_partition UInt16,
    kafka_offset UInt64,
    archived_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (rule_id, member_id, decision_key, status);

-- Delivery results (delivered / deferred / bounced / failed), opens, clicks and unsubscribes.
CREATE TABLE IF NOT EXISTS kagoflow.engagement
(
    at_ms Int64,
    at DateTime('UTC') DEFAULT toDateTime(intDiv(at_ms, 1000), 'UTC'),
    date Date DEFAULT toDate(toDateTime(intDiv(at_ms, 1000), 'UTC')),
    event String,
    decision_key String,
    member_id String,
    rule_id String,
    url String,
    detail String,
    suspected_bot UInt8,
    kafka_partition UInt16,
    kafka_offset UInt64,
    archived_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (member_id, decision_key, event, kafka_partition, kafka_offset);

-- Every coupon code sent to a member (SPEC §13, the coupons_issued topic): one row per decision key.
CREATE TABLE IF NOT EXISTS kagoflow.coupons_issued
(
    code String,
    member_id String,
    rule_id String,
    decision_key String,
    kind String,
    variant String,
    issued_ms Int64,
    issued_at DateTime('UTC') DEFAULT toDateTime(intDiv(issued_ms, 1000), 'UTC'),
    date Date DEFAULT toDate(toDateTime(intDiv(issued_ms, 1000), 'UTC')),
    expires String,
    expires_ms Nullable(Int64),
    kafka_partition UInt16,
    kafka_offset UInt64,
    archived_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (code, decision_key);

-- Deduplicated reads for analysts.
DROP TABLE IF EXISTS kagoflow.v_beacons;
CREATE VIEW kagoflow.v_beacons AS SELECT * FROM kagoflow.beacons FINAL;
DROP TABLE IF EXISTS kagoflow.v_members;
CREATE VIEW kagoflow.v_members AS SELECT * FROM kagoflow.members FINAL;
DROP TABLE IF EXISTS kagoflow.v_catalog;
CREATE VIEW kagoflow.v_catalog AS SELECT * FROM kagoflow.catalog FINAL;
DROP TABLE IF EXISTS kagoflow.v_orders;
CREATE VIEW kagoflow.v_orders AS SELECT * FROM kagoflow.orders FINAL;
DROP TABLE IF EXISTS kagoflow.v_mail_decisions;
CREATE VIEW kagoflow.v_mail_decisions AS SELECT * FROM kagoflow.mail_decisions FINAL;
DROP TABLE IF EXISTS kagoflow.v_coupons_issued;
CREATE VIEW kagoflow.v_coupons_issued AS SELECT * FROM kagoflow.coupons_issued FINAL;

-- SPEC §13 redemption: an issued code is redeemed by the member's first order carrying it whose latest
-- status is not cancelled, ordered at or after the issue. The default list below is replaced by the shop's
-- shop.yaml cancelled_statuses when the schema is applied (kagoflow.adapters.clickhouse.schema_statements),
-- so re-applying it (`infra/stack provision`, an archiver start) re-creates this view with the shop's list.
DROP TABLE IF EXISTS kagoflow.v_coupon_redemptions;
CREATE VIEW kagoflow.v_coupon_redemptions AS
SELECT code, member_id, rule_id, decision_key, kind, variant, issued_at, expires,
       if(first_order != '' AND first_at >= issued_at, first_order, '') AS order_id,
       if(first_order != '' AND first_at >= issued_at, 1, 0) AS redeemed
FROM
(
    SELECT code, member_id, rule_id, decision_key, kind, variant, issued_at, expires
    FROM kagoflow.coupons_issued FINAL
) AS issued
ANY LEFT JOIN
(
    SELECT coupon AS code, member_id, argMin(order_id, ordered_at) AS first_order, min(ordered_at) AS first_at
    FROM
    (
        SELECT order_id, member_id, max(coupon) AS coupon, min(ordered_at) AS ordered_at,
               argMax(status, ts_ms) AS status
        FROM kagoflow.orders FINAL
        GROUP BY order_id, member_id
    )
    WHERE coupon != '' AND status NOT IN ('cancelled', 'canceled', 'returned')
    GROUP BY coupon, member_id
) AS first_orders USING (code, member_id);

-- Coupon report per rule / variant / shop-local day of issue: codes issued and redeemed.
DROP TABLE IF EXISTS kagoflow.v_coupon_report;
CREATE VIEW kagoflow.v_coupon_report AS
SELECT rule_id, variant, toDate(issued_at, 'Asia/Tokyo') AS day, count() AS issued, sum(redeemed) AS redeemed
FROM kagoflow.v_coupon_redemptions
GROUP BY rule_id, variant, day;
DROP TABLE IF EXISTS kagoflow.v_engagement;
CREATE VIEW kagoflow.v_engagement AS SELECT * FROM kagoflow.engagement FINAL;

-- One row per purchase: an order (latest status not cancelled; amount = total, else Σ quantity × price)
-- or a purchase beacon (its order_id, else its event_id). A beacon and an order with the same order id
-- are one purchase.
DROP TABLE IF EXISTS kagoflow.v_purchases;
CREATE VIEW kagoflow.v_purchases AS
SELECT purchase_id, any(member_id) AS member_id, min(purchased_at) AS purchased_at, max(amount) AS amount
FROM
(
    SELECT order_id AS purchase_id, member_id, ordered_at AS purchased_at, amount
    FROM
    (
        SELECT
            order_id,
            any(member_id) AS member_id,
            min(ordered_at) AS ordered_at,
            argMax(ifNull(total, arraySum(arrayMap((q, p) -> q * p, item_quantities, item_prices))), ts_ms)
                AS amount,
            argMax(status, ts_ms) AS last_status
        FROM kagoflow.orders FINAL
        GROUP BY order_id
    )
    WHERE last_status NOT IN ('cancelled', 'canceled')
    UNION ALL
    SELECT if(order_id = '', event_id, order_id) AS purchase_id, member_id, ts AS purchased_at,
           toFloat64(0) AS amount
    FROM kagoflow.beacons FINAL
    WHERE type = 'purchase'
)
GROUP BY purchase_id;

-- Per mail (decision key): what happened after the send. Opens and clicks flagged suspected_bot (privacy
-- proxies, link scanners) count only in the *_incl_bots columns; a human click implies an open.
DROP TABLE IF EXISTS kagoflow.v_mail_engagement;
CREATE VIEW kagoflow.v_mail_engagement AS
SELECT
    decision_key,
    any(member_id) AS engaged_member_id,
    toUInt8(countIf(event = 'delivered') > 0) AS delivered,
    toUInt8(countIf(event = 'bounced' OR event = 'failed') > 0) AS bounced,
    toUInt8(countIf((event = 'open' OR event = 'click') AND suspected_bot = 0) > 0) AS opened,
    toUInt8(countIf(event = 'click' AND suspected_bot = 0) > 0) AS clicked,
    toUInt8(countIf(event = 'open' OR event = 'click') > 0) AS opened_incl_bots,
    toUInt8(countIf(event = 'click') > 0) AS clicked_incl_bots,
    toUInt8(countIf(event = 'unsubscribe') > 0) AS unsubscribed,
    countIf(event = 'open' AND suspected_bot = 0) AS opens,
    countIf(event = 'click' AND suspected_bot = 0) AS clicks
FROM kagoflow.engagement FINAL
GROUP BY decision_key;

-- Daily send list: who got what (sent mails, shop-local day), with the member's latest e-mail address.
DROP TABLE IF EXISTS kagoflow.v_daily_send_list;
CREATE VIEW kagoflow.v_daily_send_list AS
SELECT day, at, member_id, email, rule_id, kind, step, variant, template, products, coupon, decision_key
FROM
(
    SELECT toDate(at, 'Asia/Tokyo') AS day, at, member_id, rule_id, kind, step, variant, template, products,
           coupon, decision_key
    FROM kagoflow.mail_decisions FINAL
    WHERE status = 'sent'
) AS sent_mails
ANY LEFT JOIN
(
    SELECT member_id, argMax(email, ts_ms) AS email
    FROM kagoflow.members FINAL
    GROUP BY member_id
) AS profiles
USING member_id;


-- ==== Reports (issue 15): pre-aggregated so report pages do not scan raw tables ==========================
-- Materialized views feed AggregatingMergeTree tables with idempotent states only (min / max / argMax), so a
-- replayed row (archiver crash, worker re-deciding at another moment) changes no number: max(1, 1) = 1,
-- min(first at, later at) = first at. Sums and counts are taken at read time over FINAL (merged) rows.
-- The views are created once (IF NOT EXISTS: re-creating them would drop rows inserted meanwhile); rows archived
-- before they existed are backfilled by `infra/stack provision` (stacklib.provision.backfill_reports), which
-- may run while the archiver inserts: a row counted twice changes nothing, for the same reason.

-- One row per mail (rule, decision key): the first moment of each status and the engagement flags.
-- 9223372036854775807 = "never" for the *_ms minima.
CREATE TABLE IF NOT EXISTS kagoflow.report_mails
(
    rule_id String,
    decision_key String,
    member_id AggregateFunction(max, String),
    step AggregateFunction(max, UInt8),
    variant AggregateFunction(max, String),
    coupon AggregateFunction(max, String),
    sent_ms AggregateFunction(min, Int64),
    capped_ms AggregateFunction(min, Int64),
    suppressed_ms AggregateFunction(min, Int64),
    skipped_ms AggregateFunction(min, Int64),
    held_out_ms AggregateFunction(min, Int64),
    delivered AggregateFunction(max, UInt8),
    bounced AggregateFunction(max, UInt8),
    opened AggregateFunction(max, UInt8),
    clicked AggregateFunction(max, UInt8),
    opened_incl_bots AggregateFunction(max, UInt8),
    clicked_incl_bots AggregateFunction(max, UInt8),
    unsubscribed AggregateFunction(max, UInt8)
)
ENGINE = AggregatingMergeTree()
ORDER BY (rule_id, decision_key);

CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_mails_decisions TO kagoflow.report_mails AS
SELECT
    rule_id,
    decision_key,
    maxState(member_id) AS member_id,
    maxState(step) AS step,
    maxState(variant) AS variant,
    maxState(coupon) AS coupon,
    minState(if(status = 'sent', at_ms, toInt64(9223372036854775807))) AS sent_ms,
    minState(if(status = 'capped', at_ms, toInt64(9223372036854775807))) AS capped_ms,
    minState(if(status = 'suppressed', at_ms, toInt64(9223372036854775807))) AS suppressed_ms,
    minState(if(status = 'skipped', at_ms, toInt64(9223372036854775807))) AS skipped_ms,
    minState(if(status = 'held_out', at_ms, toInt64(9223372036854775807))) AS held_out_ms,
    maxState(toUInt8(0)) AS delivered,
    maxState(toUInt8(0)) AS bounced,
    maxState(toUInt8(0)) AS opened,
    maxState(toUInt8(0)) AS clicked,
    maxState(toUInt8(0)) AS opened_incl_bots,
    maxState(toUInt8(0)) AS clicked_incl_bots,
    maxState(toUInt8(0)) AS unsubscribed
FROM kagoflow.mail_decisions
GROUP BY rule_id, decision_key;

-- Opens and clicks flagged suspected_bot count only in the *_incl_bots flags; a human click implies an open.
CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_mails_engagement TO kagoflow.report_mails AS
SELECT
    rule_id,
    decision_key,
    maxState(member_id) AS member_id,
    maxState(toUInt8(0)) AS step,
    maxState('') AS variant,
    maxState('') AS coupon,
    minState(toInt64(9223372036854775807)) AS sent_ms,
    minState(toInt64(9223372036854775807)) AS capped_ms,
    minState(toInt64(9223372036854775807)) AS suppressed_ms,
    minState(toInt64(9223372036854775807)) AS skipped_ms,
    minState(toInt64(9223372036854775807)) AS held_out_ms,
    maxState(toUInt8(event = 'delivered')) AS delivered,
    maxState(toUInt8(event = 'bounced' OR event = 'failed')) AS bounced,
    maxState(toUInt8((event = 'open' OR event = 'click') AND suspected_bot = 0)) AS opened,
    maxState(toUInt8(event = 'click' AND suspected_bot = 0)) AS clicked,
    maxState(toUInt8(event = 'open' OR event = 'click')) AS opened_incl_bots,
    maxState(toUInt8(event = 'click')) AS clicked_incl_bots,
    maxState(toUInt8(event = 'unsubscribe')) AS unsubscribed
FROM kagoflow.engagement
GROUP BY rule_id, decision_key;

-- Human clicks by member and time, for last-click attribution (ReplacingMergeTree: a replayed click
-- collapses with its twin; FINAL reads are exact).
CREATE TABLE IF NOT EXISTS kagoflow.report_clicks
(
    member_id String,
    at_ms Int64,
    decision_key String,
    rule_id String
)
ENGINE = ReplacingMergeTree()
ORDER BY (member_id, at_ms, decision_key);

CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_clicks TO kagoflow.report_clicks AS
SELECT member_id, at_ms, decision_key, rule_id
FROM kagoflow.engagement
WHERE event = 'click' AND suspected_bot = 0;

-- Member search (seed 000 §2): per product, shop-local day, action and member, the first and last action time.
-- (`product`, not product_id: an alias may not shadow a source column on 18.16.)
-- Actions: cart (cart_add), favorite (favorite_add), view, purchase (each listed product of a purchase).
CREATE TABLE IF NOT EXISTS kagoflow.report_member_actions
(
    product String,
    day Date,
    action String,
    member_id String,
    first_ms AggregateFunction(min, Int64),
    last_ms AggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (product, day, action, member_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_member_actions TO kagoflow.report_member_actions AS
SELECT
    acted AS product,
    toDate(toDateTime(intDiv(ts_ms, 1000), 'UTC'), 'Asia/Tokyo') AS day,
    transform(type, ['cart_add', 'favorite_add', 'view', 'purchase'], ['cart', 'favorite', 'view', 'purchase'], '')
        AS action,
    member_id,
    minState(ts_ms) AS first_ms,
    maxState(ts_ms) AS last_ms
FROM kagoflow.beacons
ARRAY JOIN arrayFilter(x -> x != '', arrayPushFront(product_ids, product_id)) AS acted
WHERE type IN ('cart_add', 'favorite_add', 'view', 'purchase')
GROUP BY acted, day, action, member_id;

-- SPEC §8 / §14 report: per rule / step / variant / shop-local day of the decision (its first moment of
-- that status). open/click rate = mails opened/clicked by a human ÷ sent; conversion rate = attributed
-- purchases ÷ unique clicks; revenue per mail = attributed revenue ÷ sent. Reads the per-mail table.
DROP TABLE IF EXISTS kagoflow.v_report_mails;
CREATE VIEW kagoflow.v_report_mails AS
SELECT
    rule_id,
    decision_key,
    maxMerge(member_id) AS member_id,
    maxMerge(step) AS step,
    maxMerge(variant) AS variant,
    maxMerge(coupon) AS coupon,
    minMerge(sent_ms) AS sent_ms,
    minMerge(capped_ms) AS capped_ms,
    minMerge(suppressed_ms) AS suppressed_ms,
    minMerge(skipped_ms) AS skipped_ms,
    minMerge(held_out_ms) AS held_out_ms,
    maxMerge(delivered) AS delivered,
    maxMerge(bounced) AS bounced,
    maxMerge(opened) AS opened,
    maxMerge(clicked) AS clicked,
    maxMerge(opened_incl_bots) AS opened_incl_bots,
    maxMerge(clicked_incl_bots) AS clicked_incl_bots,
    maxMerge(unsubscribed) AS unsubscribed
FROM kagoflow.report_mails
GROUP BY rule_id, decision_key;

-- Purchases by member (as v_purchases, pre-aggregated): an order (latest status not cancelled; amount =
-- total, else Σ quantity × price) or a purchase beacon (its order_id, else its event_id); a beacon and an
-- order with the same order id are one purchase. argMax by the record's own time is replay-safe.
CREATE TABLE IF NOT EXISTS kagoflow.report_purchases
(
    member_id String,
    purchase_id String,
    purchased_ms AggregateFunction(min, Int64),
    order_amount AggregateFunction(argMax, Float64, Int64),
    order_status AggregateFunction(argMax, String, Int64),
    has_order AggregateFunction(max, UInt8),
    has_beacon AggregateFunction(max, UInt8)
)
ENGINE = AggregatingMergeTree()
ORDER BY (member_id, purchase_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_purchases_orders TO kagoflow.report_purchases AS
SELECT
    member_id,
    order_id AS purchase_id,
    minState(toInt64(toUInt32(ordered_at)) * 1000) AS purchased_ms,
    argMaxState(ifNull(total, arraySum(arrayMap((q, p) -> q * p, item_quantities, item_prices))), ts_ms)
        AS order_amount,
    argMaxState(status, ts_ms) AS order_status,
    maxState(toUInt8(1)) AS has_order,
    maxState(toUInt8(0)) AS has_beacon
FROM kagoflow.orders
GROUP BY member_id, order_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_purchases_beacons TO kagoflow.report_purchases AS
SELECT
    member_id,
    if(order_id = '', event_id, order_id) AS purchase_id,
    minState(ts_ms) AS purchased_ms,
    argMaxState(toFloat64(0), toInt64(-9223372036854775807)) AS order_amount,
    argMaxState('', toInt64(-9223372036854775807)) AS order_status,
    maxState(toUInt8(0)) AS has_order,
    maxState(toUInt8(1)) AS has_beacon
FROM kagoflow.beacons
WHERE type = 'purchase'
GROUP BY member_id, purchase_id;

DROP TABLE IF EXISTS kagoflow.v_report_purchases;
CREATE VIEW kagoflow.v_report_purchases AS
SELECT member_id, purchase_id, purchased_ms, if(order_ok, amount, 0) AS amount
FROM
(
    SELECT member_id, purchase_id, minMerge(purchased_ms) AS purchased_ms,
           argMaxMerge(order_amount) AS amount,
           maxMerge(has_order) = 1 AND argMaxMerge(order_status) NOT IN ('cancelled', 'canceled') AS order_ok,
           maxMerge(has_beacon) AS beacon
    FROM kagoflow.report_purchases
    GROUP BY member_id, purchase_id
)
WHERE order_ok OR beacon = 1;

-- Conversions, last-click attribution: each purchase is credited to the mail whose (human) click came
-- latest before it, within 2 days (172800000 ms); a purchase is never counted twice.
DROP TABLE IF EXISTS kagoflow.v_mail_conversions;
CREATE VIEW kagoflow.v_mail_conversions AS
SELECT decision_key, count() AS conversions, sum(amount) AS revenue
FROM
(
    SELECT purchase_id, argMax(decision_key, click_ms) AS decision_key, any(amount) AS amount
    FROM
    (
        SELECT member_id, decision_key, at_ms AS click_ms
        FROM kagoflow.report_clicks FINAL
    ) AS clicks
    ALL INNER JOIN
    (
        SELECT member_id, purchase_id, purchased_ms, amount
        FROM kagoflow.v_report_purchases
    ) AS purchases
    USING member_id
    WHERE purchased_ms >= click_ms AND purchased_ms <= click_ms + 172800000
    GROUP BY purchase_id
)
GROUP BY decision_key;

DROP TABLE IF EXISTS kagoflow.v_mail_report;
CREATE VIEW kagoflow.v_mail_report AS
SELECT
    rule_id,
    step,
    variant,
    day,
    countIf(status = 'sent') AS sent,
    countIf(status = 'capped') AS capped,
    countIf(status = 'suppressed') AS suppressed,
    countIf(status = 'skipped') AS skipped,
    sumIf(delivered, status = 'sent') AS delivered,
    sumIf(bounced, status = 'sent') AS bounced,
    sumIf(opened, status = 'sent') AS opened,
    sumIf(clicked, status = 'sent') AS clicked,
    sumIf(opened_incl_bots, status = 'sent') AS opened_incl_bots,
    sumIf(clicked_incl_bots, status = 'sent') AS clicked_incl_bots,
    sumIf(unsubscribed, status = 'sent') AS unsubscribed,
    sumIf(conversions, status = 'sent') AS conversions,
    sumIf(revenue, status = 'sent') AS revenue,
    if(sent > 0, opened / sent, 0) AS open_rate,
    if(sent > 0, clicked / sent, 0) AS click_rate,
    if(clicked > 0, conversions / clicked, 0) AS conversion_rate,
    if(sent > 0, revenue / sent, 0) AS revenue_per_mail,
    countIf(status = 'held_out') AS held_out
FROM
(
    SELECT rule_id, step, variant, toDate(toDateTime(intDiv(first_ms, 1000), 'UTC'), 'Asia/Tokyo') AS day,
           status, delivered, bounced, opened, clicked, opened_incl_bots, clicked_incl_bots, unsubscribed,
           conversions, revenue
    FROM
    (
        SELECT rule_id, decision_key, step, variant, delivered, bounced, opened, clicked, opened_incl_bots,
               clicked_incl_bots, unsubscribed,
               tupleElement(first, 1) AS status, tupleElement(first, 2) AS first_ms
        FROM kagoflow.v_report_mails
        ARRAY JOIN [('sent', sent_ms), ('capped', capped_ms), ('suppressed', suppressed_ms),
                    ('skipped', skipped_ms), ('held_out', held_out_ms)] AS first
        WHERE tupleElement(first, 2) < 9223372036854775807
    ) AS mails
    ANY LEFT JOIN
    (
        SELECT decision_key, conversions, revenue
        FROM kagoflow.v_mail_conversions
    ) AS converted
    USING decision_key
)
GROUP BY rule_id, step, variant, day;


-- ==== Report summaries by day (issue 15, second round): the console reads a period as a range of these ===========
-- tables, sorted by the UTC date of the row's own moment, so a week or two of a big archive is a few index ranges.
-- Keys are cityHash64 of the decision key / member id / purchase id (narrow joins); every read aggregates with
-- idempotent functions (min, argMax, groupBitOr, DISTINCT keys), so a replayed row changes no number, and the
-- ReplacingMergeTree engines collapse exact replays on merge. Backfilled like the tables above.

-- One row per decision key, status and decision moment (a worker re-deciding after a crash adds a row at its
-- later moment; reports take the first).
CREATE TABLE IF NOT EXISTS kagoflow.report_decisions
(
    date Date,
    rule_id String,
    status String,
    mail_hash UInt64,
    at_ms Int64,
    mail_step UInt8,
    mail_variant String,
    member_id String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (date, rule_id, status, mail_hash, at_ms);

CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_decisions TO kagoflow.report_decisions AS
SELECT toDate(toDateTime(intDiv(at_ms, 1000), 'UTC')) AS date, rule_id, status,
       cityHash64(decision_key) AS mail_hash, at_ms, step AS mail_step, variant AS mail_variant, member_id
FROM kagoflow.mail_decisions
WHERE status IN ('sent', 'capped', 'suppressed', 'skipped', 'held_out');

-- What happened to a mail, per UTC date of the events: bit 1 delivered, 2 bounced (or failed), 4 opened by a
-- human (an open or a click), 8 clicked by a human, 16 opened by anyone, 32 clicked by anyone, 64 unsubscribed.
CREATE TABLE IF NOT EXISTS kagoflow.report_mail_events
(
    date Date,
    rule_id String,
    mail_hash UInt64,
    flags AggregateFunction(groupBitOr, UInt8)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (date, rule_id, mail_hash);

CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_mail_events TO kagoflow.report_mail_events AS
SELECT toDate(toDateTime(intDiv(at_ms, 1000), 'UTC')) AS date, rule_id, cityHash64(decision_key) AS mail_hash,
       groupBitOrState(toUInt8(
           multiIf(event = 'delivered', 1, event = 'bounced' OR event = 'failed', 2, event = 'unsubscribe', 64, 0)
           + if((event = 'open' OR event = 'click') AND suspected_bot = 0, 4, 0)
           + if(event = 'click' AND suspected_bot = 0, 8, 0)
           + if(event = 'open' OR event = 'click', 16, 0)
           + if(event = 'click', 32, 0))) AS flags
FROM kagoflow.engagement
GROUP BY date, rule_id, mail_hash;

-- Human clicks by UTC date, for last-click attribution over a period.
CREATE TABLE IF NOT EXISTS kagoflow.report_click_days
(
    date Date,
    member_hash UInt64,
    at_ms Int64,
    mail_hash UInt64,
    rule_id String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (date, member_hash, at_ms, mail_hash);

CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_click_days TO kagoflow.report_click_days AS
SELECT toDate(toDateTime(intDiv(at_ms, 1000), 'UTC')) AS date, cityHash64(member_id) AS member_hash, at_ms,
       cityHash64(decision_key) AS mail_hash, rule_id
FROM kagoflow.engagement
WHERE event = 'click' AND suspected_bot = 0;

-- Purchase records by UTC date of the purchase: every order record (its status and amount at ts_ms) and every
-- purchase beacon (purchase id = its order_id, else its event_id; a beacon and an order with the same order id
-- are one purchase). Read: min(purchased_ms); the order's latest status and amount by argMax over order rows.
CREATE TABLE IF NOT EXISTS kagoflow.report_purchase_days
(
    date Date,
    member_hash UInt64,
    purchase_hash UInt64,
    purchased_ms Int64,
    is_order UInt8,
    record_ms Int64,
    order_status String,
    order_amount Float64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (date, member_hash, purchase_hash, is_order, record_ms);

CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_purchase_days_orders TO kagoflow.report_purchase_days AS
SELECT toDate(ordered_at) AS date, cityHash64(member_id) AS member_hash, cityHash64(order_id) AS purchase_hash,
       toInt64(toUInt32(ordered_at)) * 1000 AS purchased_ms, toUInt8(1) AS is_order, ts_ms AS record_ms,
       status AS order_status,
       ifNull(total, arraySum(arrayMap((q, p) -> q * p, item_quantities, item_prices))) AS order_amount
FROM kagoflow.orders;

CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_purchase_days_beacons TO kagoflow.report_purchase_days AS
SELECT toDate(toDateTime(intDiv(ts_ms, 1000), 'UTC')) AS date, cityHash64(member_id) AS member_hash,
       cityHash64(if(order_id = '', event_id, order_id)) AS purchase_hash, ts_ms AS purchased_ms,
       toUInt8(0) AS is_order, ts_ms AS record_ms, '' AS order_status, toFloat64(0) AS order_amount
FROM kagoflow.beacons
WHERE type = 'purchase';

-- Sent mails by UTC date of the send (the daily send list), and each member's latest e-mail address.
CREATE TABLE IF NOT EXISTS kagoflow.report_sends
(
    date Date,
    at_ms Int64,
    at DateTime('UTC'),
    decision_key String,
    member_id String,
    rule_id String,
    kind String,
    step UInt8,
    variant String,
    template String,
    products Array(String),
    coupon String,
    kafka_partition UInt16,
    kafka_offset UInt64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (date, at_ms, decision_key);

CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_sends TO kagoflow.report_sends AS
SELECT toDate(toDateTime(intDiv(at_ms, 1000), 'UTC')) AS date, at_ms, at, decision_key, member_id, rule_id, kind,
       step, variant, template, products, coupon, kafka_partition, kafka_offset
FROM kagoflow.mail_decisions
WHERE status = 'sent';

CREATE TABLE IF NOT EXISTS kagoflow.report_emails
(
    member_id String,
    latest_email AggregateFunction(argMax, String, Int64)
)
ENGINE = AggregatingMergeTree()
ORDER BY member_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS kagoflow.mv_report_emails TO kagoflow.report_emails AS
SELECT member_id, argMaxState(email, ts_ms) AS latest_email
FROM kagoflow.members
GROUP BY member_id;
