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
-- Analytics days are shop-local days in Asia/Tokyo (the SPEC default shop time zone).
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
    archived_at DateTime('UTC') DEFAULT now()
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
-- status is not cancelled (default cancelled_statuses), ordered at or after the issue.
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

-- Conversions, last-click attribution: each purchase is credited to the mail whose (human) click came
-- latest before it, within 2 days (172800 s); a purchase is never counted twice.
DROP TABLE IF EXISTS kagoflow.v_mail_conversions;
CREATE VIEW kagoflow.v_mail_conversions AS
SELECT decision_key, count() AS conversions, sum(amount) AS revenue
FROM
(
    SELECT purchase_id, argMax(decision_key, click_at) AS decision_key, any(amount) AS amount
    FROM
    (
        SELECT member_id, decision_key, at AS click_at
        FROM kagoflow.engagement FINAL
        WHERE event = 'click' AND suspected_bot = 0
    ) AS clicks
    ALL INNER JOIN
    (
        SELECT member_id, purchase_id, purchased_at, amount
        FROM kagoflow.v_purchases
    ) AS purchases
    USING member_id
    WHERE purchased_at >= click_at AND purchased_at <= click_at + 172800
    GROUP BY purchase_id
)
GROUP BY decision_key;

-- SPEC §8 report: per rule / step / variant / shop-local day of the decision.
-- open/click rate = mails opened/clicked by a human ÷ sent; conversion rate = attributed purchases ÷ unique
-- clicks; revenue per mail = attributed revenue ÷ sent.
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
    if(sent > 0, revenue / sent, 0) AS revenue_per_mail
FROM
(
    SELECT rule_id, step, variant, day, status, delivered, bounced, opened, clicked, opened_incl_bots,
           clicked_incl_bots, unsubscribed, conversions, revenue
    FROM
    (
        SELECT decision_key, rule_id, step, variant, day, status, delivered, bounced, opened, clicked,
               opened_incl_bots, clicked_incl_bots, unsubscribed
        FROM
        (
            SELECT decision_key, rule_id, step, variant, toDate(at, 'Asia/Tokyo') AS day, status
            FROM kagoflow.mail_decisions FINAL
        ) AS decisions
        ANY LEFT JOIN
        (
            SELECT decision_key, delivered, bounced, opened, clicked, opened_incl_bots, clicked_incl_bots,
                   unsubscribed
            FROM kagoflow.v_mail_engagement
        ) AS engaged
        USING decision_key
    ) AS mails
    ANY LEFT JOIN
    (
        SELECT decision_key, conversions, revenue
        FROM kagoflow.v_mail_conversions
    ) AS converted
    USING decision_key
)
GROUP BY rule_id, step, variant, day;

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
