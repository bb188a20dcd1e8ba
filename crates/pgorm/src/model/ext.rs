//! [`ModelExt`]: the model calls, for every [`GenericClient`].

use std::future::Future;

use tokio_postgres::types::ToSql;

use super::{sql, BoxedParam, FromRow, Model};
use crate::client::{GenericClient, Params};
use crate::error::{OrmError, OrmResult, ValidationError};

/// Model calls on anything that runs statements: a
/// [`PgClient`](crate::PgClient), a pooled connection, a
/// [`PgTransaction`](crate::PgTransaction) or tokio-postgres' own client and
/// transaction. Implemented for every [`GenericClient`]; bring it in scope
/// with `use pgorm::model::ModelExt` (or the prelude).
///
/// # Errors
/// Every call returns [`OrmError::Validation`] for a model whose names
/// cannot be identifiers (nothing is sent), the server's error as
/// [`OrmError::Query`], and the decoding errors of [`FromRow`].
pub trait ModelExt: GenericClient {
    /// The row with this key, if there is one.
    fn find<M: Model>(&self, key: &M::Key) -> impl Future<Output = OrmResult<Option<M>>> + Send {
        async move {
            let sql = sql::select_by_key::<M>()?;
            match self.query_opt(&sql, &M::key_params(key)).await? {
                Some(row) => M::from_row(&row).map(Some),
                None => Ok(None),
            }
        }
    }

    /// The rows with these keys, in one query (keys without a row are
    /// absent; the order is the server's).
    fn find_many<M: Model>(
        &self,
        keys: &[M::Key],
    ) -> impl Future<Output = OrmResult<Vec<M>>> + Send {
        async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let sql = sql::select_by_keys::<M>()?;
            let arrays = M::key_arrays(keys);
            let rows = self.query(&sql, &as_params(&arrays)).await?;
            rows.iter().map(M::from_row).collect()
        }
    }

    /// Inserts `model` (its generated fields are left to the database) and
    /// returns the row as stored, generated columns filled in.
    fn insert<M: Model>(&self, model: &M) -> impl Future<Output = OrmResult<M>> + Send {
        async move {
            let sql = sql::insert::<M>()?;
            let values = model.insert_params();
            let row = self.query_one(&sql, &as_params(&values)).await?;
            M::from_row(&row)
        }
    }

    /// Writes every non-key, non-generated field of `model` to the row with
    /// its key, and returns the row as stored.
    ///
    /// # Errors
    /// [`OrmError::NotFound`] when no row has that key;
    /// [`OrmError::Validation`] when the model has no column to update.
    fn update<M: Model>(&self, model: &M) -> impl Future<Output = OrmResult<M>> + Send {
        async move {
            let Some(sql) = sql::update::<M>()? else {
                return Err(OrmError::from(ValidationError::Setting {
                    setting: "update",
                    reason: format!(
                        "{} has no column besides its key and generated ones",
                        M::TABLE
                    ),
                }));
            };
            let values = model.update_params();
            let key = model.key();
            let mut params = as_params(&values);
            params.extend(M::key_params(&key));
            let row = self.query_one(&sql, &params).await?;
            M::from_row(&row)
        }
    }

    /// Deletes the row with `model`'s key; whether there was one.
    fn delete<M: Model>(&self, model: &M) -> impl Future<Output = OrmResult<bool>> + Send {
        async move { self.delete_by_key::<M>(&model.key()).await }
    }

    /// Deletes the row with this key; whether there was one.
    fn delete_by_key<M: Model>(
        &self,
        key: &M::Key,
    ) -> impl Future<Output = OrmResult<bool>> + Send {
        async move {
            let sql = sql::delete::<M>()?;
            Ok(self.execute(&sql, &M::key_params(key)).await? > 0)
        }
    }

    /// Runs hand-written SQL (parameters bound, never interpolated) and
    /// reads every row as a `T`.
    fn query_as<T: FromRow + Send>(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = OrmResult<Vec<T>>> + Send {
        async move {
            let rows = self.query(sql, params).await?;
            rows.iter().map(T::from_row).collect()
        }
    }

    /// As [`query_as`](Self::query_as) for a query that returns exactly one
    /// row.
    ///
    /// # Errors
    /// [`OrmError::NotFound`] when it returns none.
    fn query_one_as<T: FromRow + Send>(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = OrmResult<T>> + Send {
        async move { T::from_row(&self.query_one(sql, params).await?) }
    }

    /// As [`query_as`](Self::query_as) for a query that returns at most one
    /// row.
    fn query_opt_as<T: FromRow + Send>(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> impl Future<Output = OrmResult<Option<T>>> + Send {
        async move {
            match self.query_opt(sql, params).await? {
                Some(row) => T::from_row(&row).map(Some),
                None => Ok(None),
            }
        }
    }
}

impl<C: GenericClient + ?Sized> ModelExt for C {}

fn as_params<'a>(values: &'a [BoxedParam<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    values
        .iter()
        .map(|value| value.as_ref() as &(dyn ToSql + Sync))
        .collect()
}
